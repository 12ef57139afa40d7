"""A model folder's own image preprocessing (``AutoImageProcessor``) as a MONAI transform, for real HF vision weights.

Real ViT / DINOv2 / Swin weights expect the resize, centre crop, rescale and normalisation written in their
folder's ``preprocessor_config.json`` (DINOv2: shortest edge 256, centre crop 224, ImageNet mean/std), not a
square resize with the mean/std alone. When a model folder is given and holds that file, the radiograph loaded by
:class:`~common.data.image_loading.LoadRadiographd` (float ``(1, H, W)``) is min-max scaled to 8 bits, repeated
to RGB and handed to the processor as an ``(H, W, 3)`` ``uint8`` image, as the processor expects (its
``do_rescale`` maps 0..255 to [0, 1]): a full-range 8-bit PNG reaches the processor exactly as read from the
file. Without a folder (config-built tiny models) the bundle's own transforms are used unchanged.

The processor is loaded with ``local_files_only=True`` and ``trust_remote_code=False``: a folder whose
``auto_map`` names custom code never runs that code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from transformers import AutoImageProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "PROCESSOR_FILE",
    "ImageProcessord",
    "image_processor_output_size",
    "image_processor_settings",
    "load_image_processor",
    "radiograph_to_rgb_uint8",
]

PROCESSOR_FILE = "preprocessor_config.json"


def load_image_processor(model_path: str | Path | None, key: str = "model_path") -> Any | None:
    """The folder's ``AutoImageProcessor``, or None when there is no folder or it has no ``preprocessor_config.json``.

    Args:
        model_path: local Hugging Face model folder, or empty.
        key: the bundle config key that holds ``model_path``, named in errors.

    Raises:
        ValueError: the processor cannot be built without executing the folder's own code (``auto_map`` only).
    """
    if not model_path or not (Path(model_path) / PROCESSOR_FILE).is_file():
        return None
    try:
        return AutoImageProcessor.from_pretrained(str(model_path), local_files_only=True, trust_remote_code=False)
    except ValueError as err:
        raise ValueError(
            f"{key}={str(model_path)!r}: the image processor in {PROCESSOR_FILE} could not be built without running "
            f"code from the folder (remote code is never executed): {err}. Set 'image_processor_type' to a "
            "transformers image processor (e.g. BitImageProcessor, ViTImageProcessor)."
        ) from err


def image_processor_settings(processor: Any) -> dict[str, Any]:
    """Everything that changes the processor's output: its class (the PIL and torchvision backends differ in
    their resampling) and its saved settings. JSON-serialisable; part of the embedding cache key."""
    settings = {k: v for k, v in processor.to_dict().items() if k not in ("processor_class", "auto_map")}
    return {"class": type(processor).__name__, **settings}


def image_processor_output_size(processor: Any | None, default: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the processor's ``pixel_values`` for a square image (the size every image gets when
    the processor resizes to a fixed size or centre-crops); ``default`` (a side or a pair) when there is none."""
    if processor is None:
        return (default, default) if isinstance(default, int) else (int(default[0]), int(default[1]))
    blank = np.zeros((256, 256, 3), dtype=np.uint8)
    height, width = processor(images=blank, return_tensors="pt")["pixel_values"].shape[-2:]
    return int(height), int(width)


def radiograph_to_rgb_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(1, H, W)`` (or ``(H, W)``) radiograph of any range -> ``(H, W, 3)`` ``uint8``, min-max scaled to 0..255.

    A constant image becomes black (as MONAI's ``ScaleIntensity`` gives zeros).
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = array.astype(np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a grey radiograph (1, H, W) or (H, W), got shape {tuple(array.shape)}")
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.repeat(np.rint(scaled).astype(np.uint8)[..., None], 3, axis=-1)


class ImageProcessord(MapTransform):
    """Apply a model folder's image processor to loaded radiographs; without one, apply ``fallback`` instead.

    Args:
        keys: image keys, each a loaded ``(1, H, W)`` radiograph.
        model_path: local Hugging Face model folder; empty (a config-built model) or a folder without
            ``preprocessor_config.json`` uses ``fallback``.
        fallback: the bundle's own transforms (resize, scale, normalise), used when there is no processor.
        processor: an already loaded processor (overrides ``model_path``).
        key: the bundle config key that holds ``model_path``, named in errors.

    Output per key: ``(3, h, w)`` float32 ``pixel_values`` from the processor, or whatever ``fallback`` returns.
    """

    def __init__(
        self,
        keys: KeysCollection,
        model_path: str | Path | None = None,
        fallback: Callable[[dict], dict] | None = None,
        processor: Any | None = None,
        key: str = "model_path",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.processor = processor if processor is not None else load_image_processor(model_path, key=key)
        if self.processor is None and model_path:
            logger.warning(
                "%s=%s has no %s: using the bundle's own resize and normalisation", key, model_path, PROCESSOR_FILE
            )
        if self.processor is None and fallback is None:
            raise ValueError(f"{key}={str(model_path or '')!r} gives no image processor and no fallback transform")
        self.fallback = fallback

    def settings(self) -> dict[str, Any] | None:
        """The processor's settings (:func:`image_processor_settings`), or None when the fallback is used."""
        return None if self.processor is None else image_processor_settings(self.processor)

    def spatial_size(self, default: int | tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the output: the processor's (:func:`image_processor_output_size`), else ``default``, the
        fallback's size as the bundle sets it."""
        return image_processor_output_size(self.processor, default)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        if self.processor is None:
            return self.fallback(dict(data))
        d = dict(data)
        for name in self.key_iterator(d):
            rgb = radiograph_to_rgb_uint8(d[name])
            d[name] = self.processor(images=rgb, return_tensors="pt")["pixel_values"][0].float()
        return d
