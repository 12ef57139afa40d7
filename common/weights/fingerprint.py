"""The one base-model identity scheme: a fingerprint of the base (frozen) weights, recorded with what trained.

A checkpoint holds only what trained (adapters, heads, prompts), so it is meaningless on other base weights.
:func:`base_fingerprint` hashes the base weights themselves (names, shapes, dtypes and bytes), not a path or a
name: a re-downloaded, re-trained or randomly re-initialised model is caught alike. A model built from a config
with a fixed init seed (the demo and the tests) has deterministic weights, so its fingerprint is a function of
(seed, config): the same seed and config give the same fingerprint, another seed or config another one.

The record (:func:`base_record`) is written into every safetensors header and every adapter folder we write, and
:func:`check_base_record` compares it on every load: adapters or heads on another base are a ``ValueError`` that
names the base they belong to and the base they were given.

PEFT adapter tensors (``lora_*``, ``modules_to_save``) never count as base weights, and PEFT's renaming of the
wrapped layers (``base_model.model.``, ``.base_layer``, ``.original_module``) is undone, so the fingerprint of a
model is the same before and after LoRA is put in or loaded.

A record that leaves the machine (the model zoo's ``models/model.pt``) goes through :func:`portable_record`: every
absolute path in it (the base model's folder, a training manifest) is cut to its last component, the name a user
elsewhere can match, while the fingerprint, names and configs that identify the base stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "BASE_FINGERPRINT_KEY",
    "BASE_NAME_KEY",
    "FrozenModelIdentity",
    "base_fingerprint",
    "base_record",
    "check_base_record",
    "combine_fingerprints",
    "portable_record",
]

BASE_FINGERPRINT_KEY = "base_model_fingerprint"
BASE_NAME_KEY = "base_model_name_or_path"  # the key PEFT's adapter_config.json uses for the same thing
_ADAPTER_PART = re.compile(r"(^|\.)(lora_[A-Za-z_]+|modules_to_save|prompt_encoder)(\.|$)")
# an absolute POSIX path (not one inside a URL or a word) or a Windows drive path; group 1 is its last component
_PATH_PART, _SEP = r"[^\s,;'\"()\[\]{}<>|\\/]+", r"(?:/|\\+)"
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.:/~])(?:/|[A-Za-z]:{_SEP})(?:{_PATH_PART}{_SEP})*({_PATH_PART}){_SEP}?")
_PEFT_WRAPPERS = (re.compile(r"(^|\.)base_model\.model\."), re.compile(r"\.(base_layer|original_module)(?=\.)"))


def _base_name(name: str) -> str:
    """``x.base_model.model.a.q.base_layer.weight`` -> ``x.a.q.weight``: the name without PEFT's wrappers."""
    name = _PEFT_WRAPPERS[0].sub(r"\1", name)
    return _PEFT_WRAPPERS[1].sub("", name)


def base_fingerprint(model: torch.nn.Module, exclude_trainable: bool = False) -> str:
    """sha256 over the base weights of ``model``: every state-dict tensor except PEFT adapter tensors.

    Not cached: reading the tensors costs about a second per GB, done once per save handler and once per load;
    a cache could not see PEFT's in-place ``merge_and_unload``. Frozen encoders cache theirs
    (:class:`FrozenModelIdentity`).

    Args:
        model: the (unwrapped, not DDP) module whose base weights identify what its checkpoints belong to.
        exclude_trainable: leave out the parameters that currently require grad as well. For a model whose
            checkpoint holds "what trains" (CLEFT: LoRA, heads, logit scale and the ViT where it trains), the base
            is what does not train; for one whose trained part is only PEFT adapters (CT-CLIP, the report
            generator's LLM) it is everything else, and this stays False so a fresh model and a trained one agree.

    Returns:
        A 64-character hex digest.
    """
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} if exclude_trainable else set()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name in trainable or _ADAPTER_PART.search(name):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{_base_name(name)}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.numel():
            flat = tensor.reshape(-1)
            raw = flat.numpy() if flat.dtype == torch.bool else flat.view(torch.uint8).numpy()
            digest.update(memoryview(raw))  # no copy of the bytes
    return digest.hexdigest()


def combine_fingerprints(*parts: Any) -> str:
    """One fingerprint for a base made of several parts (e.g. two frozen encoders' identities, as JSON)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()


def base_record(fingerprint: str, name_or_path: str | None = "") -> dict[str, str]:
    """The record written with a checkpoint: the fingerprint and a readable name of the base.

    Args:
        fingerprint: from :func:`base_fingerprint` (or :func:`combine_fingerprints`).
        name_or_path: the base weights' path when they were loaded from one; empty for a model built from a
            config, which is then named ``medvlm-base:<first 16 hex digits>``.
    """
    if not fingerprint:
        raise ValueError("a checkpoint needs the fingerprint of its base model; got an empty fingerprint")
    return {BASE_FINGERPRINT_KEY: fingerprint, BASE_NAME_KEY: str(name_or_path or f"medvlm-base:{fingerprint[:16]}")}


def portable_record(record: Mapping[str, str]) -> dict[str, str]:
    """``record`` with every absolute path in its values cut to the path's last component.

    ``/home/me/models/all-MiniLM-L6-v2`` becomes ``all-MiniLM-L6-v2`` (in a value of its own, in a JSON value or in
    a comma-separated list alike); fingerprints, names and configs are unchanged, so :func:`check_base_record`
    refuses another base exactly as before.

    Args:
        record: a checkpoint record, ``{str: str}`` (non-string values JSON-encoded, as the save handler writes them).
    """
    return {key: _ABSOLUTE_PATH.sub(lambda match: match.group(1), str(value)) for key, value in record.items()}


def check_base_record(recorded: Mapping[str, Any], fingerprint: str, source: str, given_name: str = "") -> None:
    """Raise ``ValueError`` unless ``recorded`` (a header or an adapter folder's record) names this base.

    Args:
        recorded: the record that was saved (``base_model_fingerprint``, ``base_model_name_or_path``).
        fingerprint: the fingerprint of the base model it is being loaded onto.
        source: the file or folder, for the message.
        given_name: the path (or config) of the base it is being loaded onto, for the message.
    """
    theirs = recorded.get(BASE_FINGERPRINT_KEY)
    if not theirs:
        raise ValueError(
            f"{source} records no {BASE_FINGERPRINT_KEY}: it was not written by this code (or by an older version), "
            "so the base model it belongs to is unknown; retrain it, or load it with plain PEFT/safetensors yourself"
        )
    if theirs != fingerprint:
        name = recorded.get(BASE_NAME_KEY) or "?"
        raise ValueError(
            f"{source} belongs to base model {name} (fingerprint {theirs[:16]}), but was given base model "
            f"{given_name or 'medvlm-base:' + fingerprint[:16]} (fingerprint {fingerprint[:16]}): load it onto the "
            "base weights it was trained on (same weight files, or same model config and init seed)"
        )


class FrozenModelIdentity:
    """Mixin for frozen encoders that wrap a Hugging Face model as ``self.model``: its width and its weight
    fingerprint (:func:`base_fingerprint`), computed once (the weights do not change while frozen)."""

    model: torch.nn.Module

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def weights_sha256(self) -> str:
        if getattr(self, "_weights_sha256", None) is None:
            self._weights_sha256 = base_fingerprint(self.model)
        return self._weights_sha256
