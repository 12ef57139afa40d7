"""CLEFT's chest-X-ray preprocessing as MONAI dictionary transforms: pad to a square, body crop, resize, 3 channels.

The official loader (github.com/XYPB/CLEFT, datasets/*.py + transforms.py) reads the image in grey, resizes the
longest side to 256, zero-pads to a 256 x 256 square, crops to the bounding box of the Otsu foreground
("OtsuCut": the body, without the black border), resizes to 224 x 224 and repeats grey to 3 channels. The
official resize ignores the aspect ratio (a ``crop_size``/``img_size`` mix-up); ``keep_aspect_ratio=True`` resizes
the longest side and pads instead. Intensity normalisation (official: mean 0.5, std 0.5 on [0, 1]) and the
augmentations are written in the bundle config with MONAI's own transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import CropForeground, MapTransform, RepeatChannel, Resize, ResizeWithPadOrCrop, ScaleIntensity

__all__ = ["CXRBodyCropd", "otsu_foreground", "otsu_threshold"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu, IEEE SMC 1979): the cut maximising the between-class variance of a histogram."""
    hist, edges = np.histogram(values.ravel(), bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centers)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = np.flatnonzero(between == between.max())  # empty bins between two modes make a plateau: take its middle
    return float(edges[best[len(best) // 2] + 1]) if len(best) > 1 else float(centers[best[0]])


def otsu_foreground(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Boolean mask of pixels above the Otsu threshold of ``image`` (``select_fn`` for ``CropForeground``)."""
    values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if values.max() <= values.min():
        return image >= image.min()  # a constant image: keep all of it
    return image > otsu_threshold(values)


class CXRBodyCropd(MapTransform):
    """``(1, H, W)`` radiograph -> ``(3, S, S)`` in [0, 1]: longest side to ``pad_size``, zero-pad square, Otsu body
    crop, resize to ``image_size`` (S), grey repeated to 3 channels.

    Args:
        keys: image keys.
        image_size: output side (224 for ViT-B/14 in CLEFT).
        pad_size: the square the image is first fitted into (256 in CLEFT).
        keep_aspect_ratio: resize the body crop's longest side and pad (True), or stretch it to a square as the
            official code does (False).
        body_crop: crop to the Otsu foreground (OtsuCut); False skips it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_size: int = 224,
        pad_size: int = 256,
        keep_aspect_ratio: bool = False,
        body_crop: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if image_size <= 0 or pad_size <= 0:
            raise ValueError(f"image_size and pad_size must be positive, got {image_size} and {pad_size}")
        self.scale = ScaleIntensity(minv=0.0, maxv=1.0)
        self.fit = Resize(spatial_size=pad_size, size_mode="longest", mode="area")
        self.pad = ResizeWithPadOrCrop(spatial_size=(pad_size, pad_size))
        self.crop = CropForeground(select_fn=otsu_foreground, margin=0, allow_smaller=True) if body_crop else None
        if keep_aspect_ratio:
            self.resize = [Resize(image_size, size_mode="longest", mode="area"), ResizeWithPadOrCrop((image_size,) * 2)]
        else:
            self.resize = [Resize((image_size, image_size), mode="area")]
        self.to_rgb = RepeatChannel(repeats=3)

    def _one(self, image: torch.Tensor, source: str) -> torch.Tensor:
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(
                f"{source}: CLEFT expects a 2D greyscale radiograph (1, H, W), got shape {tuple(image.shape)}"
            )
        image = self.pad(self.fit(self.scale(image)))  # [0, 1], zero border = black
        if self.crop is not None:
            image = self.crop(image)
        for step in self.resize:
            image = step(image)
        return self.to_rgb(image)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            source = f"image {meta.get('filename_or_obj', '')} (field '{key}')".replace("image  ", "image ")
            d[key] = self._one(d[key], source)
        return d
