"""Strict, code-free loading of the official CT-CLIP checkpoint (``CT-CLIP_v2.pt``).

The file is a flat ``state_dict`` saved with ``torch.save``; it is read with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only and never runs code from the file. ``.safetensors`` files are
read with safetensors. Checkpoints saved with transformers <= 4.30 hold BERT's ``embeddings.position_ids``
buffer, which newer transformers no longer keeps in the state dict: that one entry is dropped. Any other
missing or unexpected key, or a shape that differs, is an error that lists them all (never a silent
``strict=False``).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from common.weights.pickle_refusal import pickle_refusal
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["DROPPED_KEYS", "check_state_dict", "load_ctclip_checkpoint", "read_state_dict"]

#: Non-persistent buffers of current transformers that old CT-CLIP checkpoints still contain.
DROPPED_KEYS: tuple[str, ...] = (
    "text_transformer.embeddings.position_ids",
    "text_transformer.embeddings.token_type_ids",
)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pt``/``.pth``/``.bin`` (``weights_only=True``, memory-mapped) or ``.safetensors``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict (names the file and what was found).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CT-CLIP checkpoint not found: {path} (set pretrained_path to a local CT-CLIP_v2.pt)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's text invites weights_only=False: say why we do not
        raise ValueError(
            pickle_refusal(
                path,
                error,
                "Save its state dict with torch.save (tensors only) or as safetensors in an environment you trust "
                "and point pretrained_path at that file.",
            )
        ) from None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` listing every missing key, unexpected key and shape mismatch between the two."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        raise ValueError(f"{source} does not fit {type(model).__name__} strictly; " + "; ".join(parts))


def load_ctclip_checkpoint(
    model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor], assign: bool = False
) -> nn.Module:
    """Load the official CT-CLIP weights into ``model`` (a :class:`~common.methods.ctclip.model.CTCLIP`) strictly.

    Args:
        model: the CT-CLIP model, built with ``keep_unused=True`` (the checkpoint holds the unused copies).
        checkpoint: a file path or an already-read state dict.
        assign: assign the checkpoint tensors instead of copying (for models built on the meta device).

    Returns:
        ``model``, with the weights loaded.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state dict"
    state_dict = read_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    model_keys = set(model.state_dict())
    for key in DROPPED_KEYS:
        if key in state_dict and key not in model_keys:
            logger.info("dropping %s from %s (a non-persistent buffer in transformers >= 4.31)", key, source)
            state_dict.pop(key)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=assign)
    if assign and not any(t.is_meta for t in state_dict.values()):
        _materialise_leftover_meta(model)
    return model


def _materialise_leftover_meta(model: nn.Module) -> None:
    """Recreate non-persistent buffers (BERT's position/token-type ids, never in a checkpoint) left on meta."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "position_ids":
                    module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
                elif name == "token_type_ids":
                    module._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)
                else:
                    raise ValueError(
                        f"buffer {name} of {type(module).__name__} is still on the meta device after loading"
                    )
