"""A warning where a centre crop discards most of a volume (demo crop sizes applied to a real scan).

The ctclip demo crops to 32 x 32 x 24 voxels (2.4 x 2.4 x 3.6 cm at CT-CLIP's spacing): right for its synthetic
volumes, but on a real chest CT it scores a cube of the mediastinum without a word. :class:`WarnCropCoverage`
stands right before ``ResizeWithPadOrCropd`` and warns once per run (per process) when the crop keeps less than
``min_kept_fraction`` of the voxels, with the input shape, its physical size, the crop and the share kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

logger = logging.getLogger(__name__)

__all__ = ["MIN_KEPT_FRACTION", "WarnCropCoverage", "crop_kept_fraction"]

MIN_KEPT_FRACTION = 0.5  # a crop that keeps less than half of the voxels "discards most of the volume"
_warned: set[tuple] = set()  # (key, spatial_size) already warned about in this process


def crop_kept_fraction(shape: Sequence[int], spatial_size: Sequence[int]) -> float:
    """The share of the voxels of ``shape`` (spatial, no channel) that a centre crop/pad to ``spatial_size`` keeps;
    a size of -1 or 0 keeps that axis whole (MONAI's convention)."""
    kept = [s if t is None or t <= 0 else min(s, t) for s, t in zip(shape, spatial_size)]
    return math.prod(kept) / max(math.prod(shape), 1)


class WarnCropCoverage(MapTransform):
    """Warn (once per run) when ``ResizeWithPadOrCropd(spatial_size)`` would discard most of the image.

    Args:
        keys: image keys, ``(C, *spatial)`` tensors (MetaTensors give the spacing for the message).
        spatial_size: the crop of the ``ResizeWithPadOrCropd`` that follows.
        min_kept_fraction: warn below this share of voxels kept.
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        min_kept_fraction: float = MIN_KEPT_FRACTION,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = [int(s) for s in spatial_size]
        self.min_kept_fraction = float(min_kept_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            marker = (key, tuple(self.spatial_size))
            if marker in _warned:
                continue
            image = d[key]
            shape = [int(s) for s in image.shape[1:]]
            kept = crop_kept_fraction(shape, self.spatial_size)
            if kept >= self.min_kept_fraction:
                continue
            _warned.add(marker)
            pixdim = getattr(image, "pixdim", None)
            spacing = [float(p) for p in pixdim.tolist()] if pixdim is not None else None
            size_mm = " = " + " x ".join(f"{s * p:.0f}" for s, p in zip(shape, spacing)) + " mm" if spacing else ""
            crop_mm = (
                " = " + " x ".join(f"{min(s, t) * p:.0f}" for s, t, p in zip(shape, self.spatial_size, spacing)) + " mm"
                if spacing
                else ""
            )
            source = getattr(image, "meta", {}).get("filename_or_obj", "") if hasattr(image, "meta") else ""
            logger.warning(
                "the crop to spatial_size %s keeps %.2f%% of the voxels of %s (%s voxels%s; crop%s): below %.0f%%, "
                "most of the volume is discarded; set spatial_size (and the model's image size) for real data "
                "(CT-CLIP: 480 x 480 x 240) or check the demo overlay is not applied (warned once per run)",
                self.spatial_size,
                100 * kept,
                source or key,
                " x ".join(map(str, shape)),
                size_mm,
                crop_mm,
                100 * self.min_kept_fraction,
            )
        return d
