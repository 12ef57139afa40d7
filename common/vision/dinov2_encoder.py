"""DINOv2 (with registers) image encoder through ``transformers``, with CLEFT's pooling.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024; Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024. CLEFT (Du et al., MICCAI 2024, arXiv 2407.21011) pools the
image as the mean over *all* tokens (CLS, registers and patches) of the last block's output **before** the
final LayerNorm (its ``--pool_feat``, credited to FLIP); the normed CLS token is the alternative.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from common.vision.image_processor import image_processor_settings, load_image_processor
from common.weights.hf_loading import enable_activation_checkpointing, load_or_build_model
from torch import nn
from transformers import AutoModel, PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["POOLING_MODES", "DINOv2Encoder"]

POOLING_MODES = ("mean_prenorm", "cls")


class DINOv2Encoder(nn.Module):
    """Image ``(B, C, H, W)`` -> pooled feature ``(B, hidden_size)``.

    Args:
        model: a ``Dinov2WithRegistersModel`` or ``Dinov2Model`` (anything with ``embeddings``, ``encoder``,
            ``layernorm``).
        pooling: ``"mean_prenorm"`` (official CLEFT pooling) or ``"cls"`` (normed CLS token).
    """

    def __init__(self, model: PreTrainedModel, pooling: str = "mean_prenorm") -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"image_pooling must be one of {POOLING_MODES}, got {pooling!r}")
        for part in ("embeddings", "encoder", "layernorm"):
            if not hasattr(model, part):
                raise ValueError(f"image encoder {type(model).__name__} has no '{part}': expected a DINOv2 model")
        self.model = model
        self.pooling = pooling
        self._freeze_unused()

    def _freeze_unused(self) -> None:
        """Parameters the forward never uses stay frozen (no DDP unused-parameter errors, no dead weights saved)."""
        mask_token = getattr(self.model.embeddings, "mask_token", None)
        if mask_token is not None:  # only for masked-image pre-training
            mask_token.requires_grad_(False)
        if self.pooling == "mean_prenorm":  # the final LayerNorm is bypassed
            self.model.layernorm.requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True) -> DINOv2Encoder:
        super().requires_grad_(requires_grad)
        self._freeze_unused()
        return self

    @classmethod
    def from_config(
        cls,
        model_path: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
        pooling: str = "mean_prenorm",
        gradient_checkpointing: bool = False,
        key: str = "image_model_path",
    ) -> DINOv2Encoder:
        """Load from a local HF folder (``facebook/dinov2-with-registers-base`` layout) or build from ``config``.

        Position embeddings are interpolated by ``transformers`` when the input size differs from the
        checkpoint's (518 for the released DINOv2; CLEFT feeds 224). The folder's ``preprocessor_config.json`` is
        not applied: CLEFT's own pipeline (Otsu body crop, ``image_size``, ``image_mean``/``image_std``
        0.5/0.5 as the paper) is part of the method; its settings are logged so a mismatch is visible.
        """
        model = load_or_build_model(model_path, config, auto_class=AutoModel, key=key)
        try:
            processor = load_image_processor(model_path, key=key)
        except ValueError as err:  # only logged below: CLEFT never applies it
            processor = None
            logger.info("%s", err)
        if processor is not None:
            logger.info(
                "%s=%s: its image processor (%s) is not applied; the bundle's CLEFT preprocessing is used",
                key,
                model_path,
                {
                    k: v
                    for k, v in image_processor_settings(processor).items()
                    if k in ("size", "crop_size", "image_mean", "image_std")
                },
            )
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        return cls(model, pooling=pooling)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Args: pixel_values ``(B, C, H, W)``. Returns ``(B, hidden_size)``."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"image encoder expects a batch of 2D images (B, C, H, W), got shape {tuple(pixel_values.shape)}"
            )
        expected_channels = int(self.model.config.num_channels)
        if pixel_values.shape[1] != expected_channels:
            raise ValueError(
                f"image encoder expects {expected_channels} channels, got {pixel_values.shape[1]} "
                f"(shape {tuple(pixel_values.shape)}); repeat greyscale to 3 channels in preprocessing"
            )
        tokens = self.model.embeddings(pixel_values)  # (B, 1 + registers + patches, D)
        prenorm = self.model.encoder(tokens).last_hidden_state
        if self.pooling == "mean_prenorm":
            return prenorm.mean(dim=1)
        return self.model.layernorm(prenorm)[:, 0]
