"""Strict, code-free loading of the official CLEFT checkpoints (XYPB/CLEFT, PyTorch Lightning ``.ckpt``).

The released files (stage 1: LoRA model; stage 2: prompt-tuned model) are Lightning checkpoints whose
``state_dict`` holds ``logit_scale``, ``img_encoder_q.*`` (the vendored DINOv2 with registers + ``global_embed``)
and ``text_encoder_q.*`` (BioMedLM with LoRA under PEFT, + ``global_embed``; stage 2 one PEFT level deeper with
the prompt-tuning embedding). They are read with ``torch.load(weights_only=True)``: tensors and plain containers
only, plus the one class Lightning pickles beside them (its ``AttributeDict`` of hyper-parameters), which is
rebuilt as a plain ``dict`` stand-in, so no code from the file ever runs. ``.safetensors`` files are read too.

Key mapping onto our :class:`~common.methods.cleft.model.CLEFT` (prefix ``clip.`` when loading into a
``CLEFTClassifier``):

- ``logit_scale`` -> ``logit_scale.log_scale`` (the official scale is unclamped; ours clamps at 100);
- ``img_encoder_q.model.*`` -> ``image_encoder.model.*`` by the DINOv2 -> ``Dinov2WithRegisters`` rules of
  transformers' conversion script, the fused ``attn.qkv`` split by rows into query/key/value;
- ``text_encoder_q.model.base_model[.base_model].model.transformer.*`` -> ``text_encoder.model.base_model.model.*``,
  LoRA's wrapped weight under either PEFT name (``c_attn.weight``, peft < 0.7; ``c_attn.base_layer.weight``);
- ``{img,text}_encoder_q.global_embed.*`` -> ``{image,text}_projection.*``;
- ``text_encoder_q.model.prompt_encoder.default.embedding.weight`` (stage 2) -> ``context.context``.

Explained and not loaded: ``*.local_embed.*`` (built and saved by the official code, used by no forward) and
``text_encoder_q.model.word_embeddings.weight`` (PEFT's second reference to ``wte``, checked equal to it). Anything
else, any of our entries left unfilled, or a shape that differs, is a :class:`CLEFTCheckpointError` listing them all.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from common.weights.pickle_refusal import pickle_refusal
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CLEFTCheckpointError",
    "LIGHTNING_SAFE_GLOBALS",
    "PROMPT_EMBEDDING_KEY",
    "dinov2_official_to_hf",
    "load_official_cleft",
    "map_official_state_dict",
    "official_keys",
    "read_official_state_dict",
]


class CLEFTCheckpointError(ValueError):
    """An official CLEFT state dict does not map one-to-one onto our model (lists what is left over)."""


class _LightningAttributeDict:
    """Stand-in for Lightning's ``AttributeDict`` (the ``dict`` subclass of ``hyper_parameters``): a plain dict."""

    def __new__(cls, *args, **kwargs) -> dict:  # the unpickler's NEWOBJ; SETITEMS then fills the plain dict
        return {}


#: What Lightning pickles beside tensors and plain containers, each mapped to a code-free stand-in.
LIGHTNING_SAFE_GLOBALS: tuple[tuple[type, str], ...] = (
    (_LightningAttributeDict, "lightning_fabric.utilities.data.AttributeDict"),
    (_LightningAttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
    (_LightningAttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (_LightningAttributeDict, "lightning.pytorch.utilities.parsing.AttributeDict"),
)

_OFFICIAL_ROOTS = ("logit_scale", "img_encoder_q.", "text_encoder_q.")
_UNUSED = re.compile(r"^(img|text)_encoder_q\.local_embed\.")
_WORD_EMBEDDINGS_ALIAS = "text_encoder_q.model.word_embeddings.weight"
PROMPT_EMBEDDING_KEY = "text_encoder_q.model.prompt_encoder.default.embedding.weight"
_LM = re.compile(r"^text_encoder_q\.model\.base_model\.(?:base_model\.)?model\.transformer\.(.+)$")

# official vendored DINOv2 name -> Dinov2WithRegisters names (transformers 5 module name first, then 4.x name)
_DINOV2_RULES: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), targets)
    for pattern, targets in (
        (r"^(cls_token|mask_token|register_tokens)$", (r"embeddings.\1",)),
        (r"^pos_embed$", ("embeddings.position_embeddings",)),
        (r"^patch_embed\.proj\.(weight|bias)$", (r"embeddings.patch_embeddings.projection.\1",)),
        (r"^norm\.(weight|bias)$", (r"layernorm.\1",)),
        (r"^blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$", (r"encoder.layer.\1.\2.\3",)),
        (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", (r"encoder.layer.\1.mlp.\2.\3",)),
        (r"^blocks\.(\d+)\.ls([12])\.gamma$", (r"encoder.layer.\1.layer_scale\2.lambda1",)),
        (
            r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$",
            (r"encoder.layer.\1.attention.o_proj.\2", r"encoder.layer.\1.attention.output.dense.\2"),
        ),
    )
)
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_NAMES = (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official CLEFT Lightning ``.ckpt`` (or a flat ``.safetensors``/``.pt`` state dict).

    Raises:
        FileNotFoundError: no such file (names where the released files come from).
        CLEFTCheckpointError: the file pickles something outside the allow-list, or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"official_checkpoint={str(path)!r} does not exist: download the released CLEFT checkpoints linked "
            "from the README of https://github.com/XYPB/CLEFT and point official_checkpoint at the .ckpt file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(list(LIGHTNING_SAFE_GLOBALS)):
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(error):
                    raise
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CLEFTCheckpointError(
            pickle_refusal(
                path,
                error,
                "It holds something outside the allow-list of what Lightning stores beside tensors: extract its "
                "'state_dict' to safetensors in an environment you trust and load that file instead.",
            )
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLEFTCheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def dinov2_official_to_hf(name: str) -> list[tuple[tuple[str, ...], slice | None]]:
    """Targets of one official DINOv2 key (without ``img_encoder_q.model.``): ``[(candidate names, rows)]``.

    Each target lists the transformers-5 module name first and the 4.x name second; ``rows`` is the slice of the
    fused qkv tensor along dim 0 given as ``slice(i, 3)`` (the i-th third), or None for the whole tensor.
    """
    qkv = _QKV.match(name)
    if qkv:
        layer, kind = qkv.groups()
        return [
            (
                (
                    f"encoder.layer.{layer}.attention.{new}.{kind}",
                    f"encoder.layer.{layer}.attention.attention.{old}.{kind}",
                ),
                slice(i, 3),
            )
            for i, (new, old) in enumerate(_QKV_NAMES)
        ]
    for pattern, targets in _DINOV2_RULES:
        if pattern.match(name):
            return [(tuple(pattern.sub(t, name) for t in targets), None)]
    return []


def _targets(key: str, prefix: str) -> list[tuple[tuple[str, ...], slice | None]]:
    """Candidate names in our model of one official key (empty: not a key we know)."""
    if key == "logit_scale":
        return [((f"{prefix}logit_scale.log_scale",), None)]
    if key.startswith("img_encoder_q.model."):
        return [
            (tuple(f"{prefix}image_encoder.model.{n}" for n in names), rows)
            for names, rows in dinov2_official_to_hf(key[len("img_encoder_q.model.") :])
        ]
    for tower, ours in (("img", "image"), ("text", "text")):
        head = f"{tower}_encoder_q.global_embed."
        if key.startswith(head) and key[len(head) :] in ("weight", "bias"):
            return [((f"{prefix}{ours}_projection.{key[len(head) :]}",), None)]
    if key == PROMPT_EMBEDDING_KEY:
        return [(("context.context",), None)]
    lm = _LM.match(key)
    if lm:
        rest = lm.group(1)
        names = [rest]
        old = re.sub(r"\.c_attn\.(weight|bias)$", r".c_attn.base_layer.\1", rest)
        new = re.sub(r"\.c_attn\.base_layer\.(weight|bias)$", r".c_attn.\1", rest)
        names += [n for n in (old, new) if n != rest]
        return [(tuple(f"{prefix}text_encoder.model.base_model.model.{n}" for n in names), None)]
    return []


def map_official_state_dict(
    official: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str = "official checkpoint"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official CLEFT state dict to our model's names, strictly.

    Args:
        official: the official state dict (``logit_scale``, ``img_encoder_q.*``, ``text_encoder_q.*``); values may
            be meta tensors (key and shape checks only).
        target: our model's ``state_dict()`` (a ``CLEFT``, or a ``CLEFTClassifier`` whose keys start with ``clip.``).
        source: named in errors.

    Returns:
        ``(mapped, explained)``: our names -> tensors covering every target key once, and the official keys
        deliberately not loaded (``local_embed``, the ``word_embeddings`` alias).

    Raises:
        CLEFTCheckpointError: listing every official key that maps nowhere, every target key left unfilled or
        filled twice, and every shape mismatch.
    """
    prefix = "clip." if any(k.startswith("clip.") for k in target) else ""
    mapped: dict[str, torch.Tensor] = {}
    explained: list[str] = []
    unexpected, duplicated, mismatched = [], [], []
    mismatched_names: set[str] = set()
    for key, tensor in official.items():
        if _UNUSED.match(key):
            explained.append(key)
            continue
        if key == _WORD_EMBEDDINGS_ALIAS:
            explained.append(key)
            continue
        targets = _targets(key, prefix) if key.startswith(_OFFICIAL_ROOTS) else []
        if not targets:
            unexpected.append(key)
            continue
        for names, rows in targets:
            name = next((n for n in names if n in target), None)
            if name is None:
                unexpected.append(f"{key} (-> {names[0]}, which our model does not have)")
                continue
            value = tensor
            if rows is not None:
                third = tensor.shape[0] // 3
                value = tensor[rows.start * third : (rows.start + 1) * third]
            if name in mapped:
                duplicated.append(f"{name} (again from {key})")
            elif tuple(value.shape) != tuple(target[name].shape):
                mismatched.append(f"{key} {tuple(value.shape)} -> {name} {tuple(target[name].shape)}")
                mismatched_names.add(name)
            else:
                mapped[name] = value
    _check_alias(official, mapped, prefix, unexpected)
    missing = sorted(k for k in target if k not in mapped and k not in mismatched_names)
    if missing or unexpected or duplicated or mismatched:
        parts = [
            f"{what} ({len(items)}): {items}"
            for what, items in (
                ("official keys our model has no place for", unexpected),
                ("entries of our model the checkpoint does not fill", missing),
                ("entries filled twice", duplicated),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        hint = ""
        if any(PROMPT_EMBEDDING_KEY in u for u in unexpected):
            hint = " (a prompt-tuned stage-2 checkpoint: load it into a CLEFTClassifier with a context)"
        elif "context.context" in missing:
            hint = " (a stage-1 checkpoint has no learned context: load it into CLEFT, not a prompt classifier)"
        raise CLEFTCheckpointError(f"{source} does not map one-to-one onto our CLEFT{hint}; " + "; ".join(parts))
    return mapped, explained


def _check_alias(official: Mapping[str, torch.Tensor], mapped: Mapping, prefix: str, problems: list[str]) -> None:
    """PEFT's ``word_embeddings`` is ``wte`` saved twice; a copy that differs would be silently dropped: refuse."""
    alias = official.get(_WORD_EMBEDDINGS_ALIAS)
    wte = mapped.get(f"{prefix}text_encoder.model.base_model.model.wte.weight")
    if alias is None or wte is None or alias.is_meta or wte.is_meta:
        return
    if alias.shape != wte.shape or not torch.equal(alias, wte):
        problems.append(f"{_WORD_EMBEDDINGS_ALIAS} (differs from transformer.wte.weight, of which it should be a copy)")


def load_official_cleft(
    model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor], assign: bool = False
) -> nn.Module:
    """Load an official CLEFT checkpoint into our ``CLEFT`` (stage 1) or ``CLEFTClassifier`` with a context (stage 2).

    Args:
        model: our model, built with the official architecture (DINOv2 ViT-B/14 with registers at 518 px,
            BioMedLM-sized GPT-2 with LoRA r=8 on ``c_attn``, ``embed_dim`` 512; for stage 2 a 30-token context).
        checkpoint: the released ``.ckpt`` / a ``.safetensors`` file, or an already-read official state dict.
        assign: assign instead of copy (models built on the meta device).

    Returns:
        ``model`` with every entry filled (tensors cast to the model's dtypes; the released files are bf16).
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "official state dict"
    official = read_official_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    target = model.state_dict()
    mapped, explained = map_official_state_dict(official, target, source)
    if assign:
        mapped = {k: v.to(target[k].dtype) for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=assign)
    logger.info(
        "loaded %d official CLEFT entries from %s; not loaded on purpose (%d): the unused local_embed heads and "
        "PEFT's word_embeddings alias of wte",
        len(official) - len(explained),
        source,
        len(explained),
    )
    return model


def official_keys(entries: Iterable[Iterable]) -> dict[str, torch.Tensor]:
    """Meta tensors for a ``[[key, shape, dtype, ...], ...]`` key list (check a layout without any weights)."""
    return {
        key: torch.empty(tuple(shape), dtype=getattr(torch, dtype), device="meta") for key, shape, dtype, *_ in entries
    }
