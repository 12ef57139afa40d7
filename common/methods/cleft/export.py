"""Merge-and-export of a trained CLEFT dual encoder into a plain model for deployment (no PEFT needed).

The text LoRA is merged into the LM's weights (PEFT ``merge_and_unload``). Layout of the export folder::

    model.safetensors   the whole merged CLEFT state dict (both towers, projections, logit scale); it loads with
                        ``load_state_dict(strict=True)`` into a CLEFT built with ``text_encoder#use_lora: false``
    text_model/         the merged causal LM and its tokenizer (``save_pretrained``): a plain Hugging Face folder
    image_model/        the (fine-tuned) DINOv2 tower (``save_pretrained``)

``model.safetensors``'s header keeps the record of the checkpoint it came from and the fingerprint of the base it
was trained on (``exported_from_base``), next to ``merged_lora: true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.data.atomic_io import atomic_directory
from common.engines.checkpoint import save_safetensors, unwrap
from common.methods.cleft.checkpoint import cleft_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["export_merged"]


def export_merged(
    network: torch.nn.Module, directory: str | Path, record: Mapping[str, Any] | None = None
) -> Path | None:
    """Merge the text LoRA of ``network`` (in place) and write the plain model to ``directory``, atomically.

    Args:
        network: a CLEFT, typically loaded from the best stage-1 checkpoint (DDP-wrapped or not).
        directory: the export folder; replaced as a whole.
        record: written into the header of ``model.safetensors`` (the training's base-model record).

    Returns:
        The folder, or None on non-zero ranks (only rank 0 writes).
    """
    if idist.get_rank() > 0:
        return None
    model = unwrap(network)
    header = {**dict(record or {}), "exported_from_base": cleft_fingerprint(model), "merged_lora": "true"}
    text = model.text_encoder
    if hasattr(text.model, "merge_and_unload"):
        text.model = text.model.merge_and_unload()
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_safetensors(model.state_dict(), tmp / "model.safetensors", header)
        text.model.save_pretrained(str(tmp / "text_model"), safe_serialization=True)
        text.tokenizer.save_pretrained(str(tmp / "text_model"))
        model.image_encoder.model.save_pretrained(str(tmp / "image_model"), safe_serialization=True)
    logger.info("exported the merged CLEFT model to %s", directory)
    return directory
