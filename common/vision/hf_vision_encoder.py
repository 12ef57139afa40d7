"""A Hugging Face ``transformers`` vision backbone (ViT, DINOv2, Swin, ...) that returns visual tokens.

The tokens are the backbone's last hidden state, as R2GenGPT does with Swin-B (``last_hidden_state``, 7x7 = 49
tokens) and LLaVA with a CLIP ViT. Real weights come from a local Hugging Face folder; an empty path builds the
same architecture from a config dict with random weights (tiny models in tests and the demo).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from common.weights.hf_loading import load_or_build_model
from torch import nn
from transformers import AutoModel, PretrainedConfig

__all__ = ["HFVisionEncoder"]


class HFVisionEncoder(nn.Module):
    """Wrap an ``AutoModel`` vision backbone so that ``forward(pixels) -> (B, N, D)`` visual tokens.

    Args:
        model_path: local Hugging Face folder with pretrained weights, or empty to build from ``config``.
        config: architecture config (``{"model_type": "vit", "image_size": 224, ...}``) used when no path is given.
        drop_cls_token: drop the first token (the CLS token of ViT/DINOv2); Swin has none, leave it False there.
        key: the bundle config key that holds ``model_path``, named in errors.

    Grey radiographs with one channel are repeated to the backbone's ``num_channels`` (3 for ImageNet weights).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        config: Mapping[str, Any] | PretrainedConfig | None = None,
        drop_cls_token: bool = False,
        key: str = "image_model_path",
    ) -> None:
        super().__init__()
        self.model = load_or_build_model(model_path, config, auto_class=AutoModel, key=key)
        self.drop_cls_token = bool(drop_cls_token)
        self.num_channels = int(getattr(self.model.config, "num_channels", 3))

    @property
    def hidden_size(self) -> int:
        """Width ``D`` of a visual token (Swin's last stage is wider than its ``embed_dim``)."""
        config = self.model.config
        if hasattr(config, "num_features"):  # Swin: embed_dim * 2 ** (num_stages - 1)
            return int(config.num_features)
        return int(config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images into visual tokens.

        Args:
            pixel_values: ``(B, C, H, W)`` with ``C`` equal to 1 or to the backbone's ``num_channels``.

        Returns:
            ``(B, N, D)`` last hidden state (without the CLS token when ``drop_cls_token``).
        """
        if pixel_values.ndim != 4:
            raise ValueError(f"vision encoder expects images shaped (B, C, H, W), got {tuple(pixel_values.shape)}")
        channels = pixel_values.shape[1]
        if channels != self.num_channels:
            if channels != 1:
                raise ValueError(
                    f"vision encoder expects 1 or {self.num_channels} image channels, got {channels} "
                    f"(shape {tuple(pixel_values.shape)})"
                )
            pixel_values = pixel_values.expand(-1, self.num_channels, -1, -1)
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return tokens[:, 1:] if self.drop_cls_token else tokens
