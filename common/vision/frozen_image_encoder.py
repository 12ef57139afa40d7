"""A frozen Hugging Face image encoder (ViT, DINOv2, ...) with MONAI preprocessing, for embedding extraction.

With a model folder that holds ``preprocessor_config.json`` (real weights), the radiograph loaded by the
pinned-reader loader goes through the folder's own ``AutoImageProcessor`` (its resize, centre crop, rescale and
normalisation; see :mod:`common.vision.image_processor`). Without one (a config-built tiny model, or a folder
without a processor), preprocessing is a MONAI ``Compose``: min-max scaling to [0, 1], a square resize to the
model's input, greyscale repeated to 3 channels, and mean/std normalisation. The whole configuration, the
processor's settings included, is part of the encoder identity, so a change of any of it invalidates cached
embeddings.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from common.data.image_loading import LoadRadiographd
from common.vision.image_processor import (
    PROCESSOR_FILE,
    ImageProcessord,
    image_processor_settings,
    load_image_processor,
)
from common.weights.fingerprint import FrozenModelIdentity
from common.weights.hf_loading import load_or_build_model
from monai.transforms import Compose, NormalizeIntensityd, RepeatChanneld, Resized, ScaleIntensityd
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FrozenImageEncoder", "IMAGE_POOLINGS"]

IMAGE_POOLINGS = ("cls", "mean", "pooler")


class FrozenImageEncoder(FrozenModelIdentity, nn.Module):
    """Frozen 2D image encoder.

    Args:
        model_path: local Hugging Face folder; empty builds ``model_config`` with random weights.
        model_config: architecture config used when ``model_path`` is empty.
        pooling: ``cls`` (first token of the last hidden state, as the paper's code), ``mean`` (mean of the
            patch tokens) or ``pooler`` (the model's pooler output).
        image_size: square input size of a model without an image processor; default: the model config's
            ``image_size``.
        image_mean, image_std: per-channel normalisation of a model without an image processor; default 0.5 / 0.5.
            A folder with ``preprocessor_config.json`` defines all three itself: giving them too is an error.
    """

    def __init__(
        self,
        model_path: str = "",
        model_config: Mapping[str, Any] | None = None,
        pooling: str = "cls",
        image_size: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in IMAGE_POOLINGS:
            raise ValueError(f"image pooling must be one of {IMAGE_POOLINGS}, got {pooling!r}")
        self.model = load_or_build_model(model_path, model_config, key="image_model_path").eval().requires_grad_(False)
        processor = load_image_processor(model_path, key="image_model_path")
        if processor is not None:
            given = [
                n for n, v in (("image_size", image_size), ("image_mean", image_mean), ("image_std", image_std)) if v
            ]
            if given:
                raise ValueError(
                    f"image_model_path={model_path!r} has {PROCESSOR_FILE}, which sets the resize, crop and "
                    f"normalisation of its weights; {', '.join(given)} would be ignored: leave them empty, or edit "
                    f"{PROCESSOR_FILE}"
                )
        self.processor = processor
        self.image_size = int(image_size or getattr(self.model.config, "image_size", 224))
        self.image_mean = [float(v) for v in (image_mean or [0.5, 0.5, 0.5])]
        self.image_std = [float(v) for v in (image_std or [0.5, 0.5, 0.5])]
        self.pooling = pooling
        self.name_or_path = model_path or f"config:{self.model.config.model_type}"
        self.from_folder = bool(model_path)
        if processor is not None:
            steps = [ImageProcessord(keys="image", processor=processor)]
        else:
            steps = [
                ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
                Resized(
                    keys="image", spatial_size=(self.image_size, self.image_size), mode="bilinear", anti_aliasing=True
                ),
                RepeatChanneld(keys="image", repeats=3),
                NormalizeIntensityd(
                    keys="image", subtrahend=self.image_mean, divisor=self.image_std, channel_wise=True
                ),
            ]
        self.transform = Compose([LoadRadiographd(keys="image"), *steps])

    def identity(self) -> dict[str, Any]:
        """Everything that changes the embedding of a given image file: part of the cache key."""
        return {
            "kind": "image",
            # the architecture, not the folder's location: the weights' sha256 names them, so the same weights in
            # another environment or folder give the same identity (and a checkpoint trained on them still loads)
            "model": f"{'folder' if self.from_folder else 'config'}:{self.model.config.model_type}",
            "weights_sha256": self.weights_sha256,
            "pooling": self.pooling,
            "preprocessing": self._preprocessing(),
        }

    def _preprocessing(self) -> dict[str, Any]:
        loader = "LoadRadiographd(pydicom|PIL, MONOCHROME1 inverted, RGB reduced)"
        if self.processor is not None:
            return {
                "loader": loader,
                "to_processor": "minmax to uint8, grey repeated to RGB",
                "image_processor": image_processor_settings(self.processor),
            }
        return {
            "loader": loader,
            "scale": "minmax[0,1]",
            "size": self.image_size,
            "resize": "bilinear+antialias",
            "mean": self.image_mean,
            "std": self.image_std,
        }

    def prepare(self, item: Mapping[str, Any]) -> torch.Tensor:
        """Load and preprocess one manifest row's image: (3, S, S), or the processor's (3, h, w)."""
        return torch.as_tensor(self.transform(dict(item))["image"]).float()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed a (B, 3, S, S) batch; returns (B, D) float32."""
        outputs = self.model(pixel_values=pixel_values.to(next(self.model.parameters()).device))
        if self.pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(f"{type(self.model).__name__} has no pooler output; use pooling 'cls' or 'mean'")
            return outputs.pooler_output.float()
        hidden = outputs.last_hidden_state
        return (hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)).float()
