"""Saving and loading the CT-CLIP LoRA adapters alone: safetensors and PEFT's folder format, written atomically.

The adapters of the paper's configuration are 1.67M parameters (6.7 MB in float32), against 1.77 GB for the
whole CT-CLIP checkpoint. The safetensors header records the LoRA settings and the base checkpoint, so an
adapter file says which base weights it belongs to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from common.data.atomic_io import atomic_directory
from common.engines.checkpoint import SafetensorsSaver, save_safetensors
from common.peft.lora import load_lora_folder, lora_state_dict, save_lora_folder

logger = logging.getLogger(__name__)

__all__ = ["BestAdapterSaver", "load_adapters", "save_adapters"]

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_FOLDER = "adapters"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def save_adapters(model: PeftModel, save_dir: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``<save_dir>/adapters.safetensors`` and the PEFT folder ``<save_dir>/adapters/``; returns the folder.

    The folder is written beside the old one and swapped in, so an interruption leaves the previous adapters.
    """
    model = _unwrap(model)
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a PEFT model with LoRA adapters, got {type(model).__name__}")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(lora_state_dict(model), save_dir / ADAPTER_FILE, metadata)
    with atomic_directory(save_dir / ADAPTER_FOLDER) as staging:
        save_lora_folder(model, staging)
    return save_dir / ADAPTER_FOLDER


def load_adapters(model: torch.nn.Module, adapter_dir: str | Path = "") -> torch.nn.Module:
    """``model`` with the PEFT adapters of ``adapter_dir`` (frozen, for evaluation); empty: the base model.

    ``adapter_dir`` may be the PEFT folder itself or the ``models/`` folder that holds ``adapters/``.
    """
    if not adapter_dir:
        logger.warning("no adapter_dir given: evaluating the base CT-CLIP model without LoRA adapters")
        return model
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file() and (folder / ADAPTER_FOLDER / "adapter_config.json").is_file():
        folder = folder / ADAPTER_FOLDER
    if not folder.exists():
        raise FileNotFoundError(f"adapter_dir={str(adapter_dir)!r} does not exist (train first, or set adapter_dir)")
    return load_lora_folder(model, folder, is_trainable=False)


def export_merged(model: PeftModel, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Merge the LoRA updates into the base weights and write a plain CT-CLIP state dict (safetensors).

    The result has the key layout of :class:`~common.methods.ctclip.model.CTCLIP` (without the dropped unused copies),
    so it loads with ``load_ctclip_checkpoint`` into a model built with ``keep_unused=False`` — no PEFT needed
    at deployment. ``model`` itself is left unmerged.
    """
    import copy

    model = _unwrap(model)
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a PEFT model with LoRA adapters, got {type(model).__name__}")
    merged = copy.deepcopy(model).merge_and_unload()
    state = {k: v for k, v in merged.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    return save_safetensors(state, path, {**dict(metadata or {}), "merged_lora": "true"})


class BestAdapterSaver(SafetensorsSaver):
    """Ignite handler: save the adapters when the evaluator's key metric improves (rank 0 only).

    Attach to the validation evaluator. With ``key_metric=None`` it saves after every run of the engine it is
    attached to (e.g. the trainer's ``COMPLETED``). Best-tracking and rank handling are
    :class:`~common.engines.checkpoint.SafetensorsSaver`'s; only the format differs (safetensors + PEFT folder).
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        key_metric: str | None = "val_mean_auroc",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(save_dir, network, file_name=ADAPTER_FOLDER, key_metric=key_metric, metadata=metadata)
        self.save_dir = Path(save_dir)

    def save(self, header: Mapping[str, Any]) -> Path:
        return save_adapters(self.network, self.save_dir, header)
