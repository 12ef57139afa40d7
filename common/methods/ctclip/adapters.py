"""Loading the CT-CLIP LoRA adapters onto their base, and merging them into a plain CT-CLIP for deployment.

Training writes the adapters with Ignite's ``Checkpoint`` and
:class:`~common.engines.save_handler.TrainedWeightsSaveHandler` (``models/adapters/``: PEFT's folder,
``models/adapters.safetensors``: the same tensors). The adapters of the paper's
configuration are 1.67M parameters (6.7 MB in float32), against 1.77 GB for the whole CT-CLIP checkpoint. Both
record the base they belong to (:mod:`common.weights.fingerprint`: the fingerprint of every CT-CLIP weight but the
adapters, so of ``pretrained_path``'s weights, or of the init seed and configs of a randomly built model), and
:func:`load_adapters` refuses another base by name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from common.engines.checkpoint import save_safetensors, unwrap
from common.engines.save_handler import check_adapter_folder
from common.peft.lora import load_lora_folder
from common.weights.fingerprint import base_fingerprint
from peft import PeftModel

logger = logging.getLogger(__name__)

__all__ = ["ctclip_fingerprint", "export_merged", "load_adapters"]

ADAPTER_FOLDER = "adapters"


def ctclip_fingerprint(model: torch.nn.Module) -> str:
    """The base-model fingerprint of CT-CLIP adapters: every weight of ``model`` except the LoRA tensors.

    The same for the plain model and the LoRA-wrapped one, so training and loading agree.
    """
    return base_fingerprint(unwrap(model))


def load_adapters(model: torch.nn.Module, adapter_dir: str | Path = "", base_name: str = "") -> torch.nn.Module:
    """``model`` with the PEFT adapters of ``adapter_dir`` (frozen, for evaluation); empty: the base model.

    Args:
        model: the base CT-CLIP (built like the one the adapters trained on).
        adapter_dir: the PEFT folder itself or the ``models/`` folder that holds ``adapters/``.
        base_name: the base's ``pretrained_path`` (or empty), for the error message.

    Raises:
        ValueError: the adapters belong to another base model (the message names both).
    """
    if not adapter_dir:
        logger.warning("no adapter_dir given: evaluating the base CT-CLIP model without LoRA adapters")
        return model
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file() and (folder / ADAPTER_FOLDER / "adapter_config.json").is_file():
        folder = folder / ADAPTER_FOLDER
    if not folder.exists():
        raise FileNotFoundError(f"adapter_dir={str(adapter_dir)!r} does not exist (train first, or set adapter_dir)")
    check_adapter_folder(folder, model, base_name)
    return load_lora_folder(model, folder, is_trainable=False)


def export_merged(model: PeftModel, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Merge the LoRA updates into the base weights and write a plain CT-CLIP state dict (safetensors).

    The result has the key layout of :class:`~common.methods.ctclip.model.CTCLIP` (without the dropped unused copies),
    so it loads with ``load_ctclip_checkpoint`` into a model built with ``keep_unused=False`` — no PEFT needed
    at deployment. ``model`` itself is left unmerged.
    """
    model = unwrap(model)
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a PEFT model with LoRA adapters, got {type(model).__name__}")
    merged = copy.deepcopy(model).merge_and_unload()
    state = {k: v for k, v in merged.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    return save_safetensors(state, path, {**dict(metadata or {}), "merged_lora": "true"})
