"""Compact storage of preprocessed CT volumes: int16 on the HU grid when exact, else float16.

CT-CLIP's preprocessing ends in ``ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True)``
(then padding with -1 and a transpose), so a float32 volume of ``(1, 240, 480, 480)`` (221 MB) whose values are
integer HU before that map is stored as int16 HU (110 MB) and decoded by the same arithmetic bit for bit. Whether
that holds is checked on the data, never assumed: after trilinear resampling the HU are not integers, and the
volume is stored as float16 (110 MB; relative error <= 2**-11, so at most 2.4e-4 on [-1, 1], 0.24 HU).
Integer and other arrays are stored as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandomizableTrait, ScaleIntensityRanged, Transform

__all__ = ["decode_array", "encode_array", "find_hu_grid", "hu_grid_to_values"]

FLOAT16_MAX = 65504.0
_CHUNK = 1 << 22


def find_hu_grid(transform: Callable, key: Hashable) -> tuple[float, float, float, float] | None:
    """``(a_min, a_max, b_min, b_max)`` of the last clipping ``ScaleIntensityRanged`` on ``key`` among the
    deterministic transforms (those a ``PersistentDataset`` caches), or None."""
    steps: Sequence = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    grid = None
    for step in steps:
        if isinstance(step, RandomizableTrait) or not isinstance(step, Transform):
            break
        if isinstance(step, ScaleIntensityRanged) and key in step.keys:
            scaler = step.scaler
            if scaler.clip and scaler.b_min is not None and scaler.b_max is not None and scaler.a_max != scaler.a_min:
                grid = (scaler.a_min, scaler.a_max, scaler.b_min, scaler.b_max)
    return grid


def hu_grid_to_values(hu: torch.Tensor, grid: Sequence[float]) -> torch.Tensor:
    """float32 values of integer HU, by the arithmetic of MONAI's ``ScaleIntensityRange`` (same order of operations).

    Args:
        hu: integer HU of any shape.
        grid: ``(a_min, a_max, b_min, b_max)``.
    """
    a_min, a_max, b_min, b_max = grid
    img = hu.to(torch.float32)
    img = (img - a_min) / (a_max - a_min)
    img = img * (b_max - b_min) + b_min
    return img.clamp(b_min, b_max)


def _exact_on_hu_grid(values: np.ndarray, grid: Sequence[float]) -> np.ndarray | None:
    """int16 HU that reproduce ``values`` (float32) bit for bit through :func:`hu_grid_to_values`, or None."""
    a_min, a_max, b_min, b_max = grid
    flat = values.reshape(-1)

    def to_hu(chunk: np.ndarray) -> np.ndarray | None:
        hu = np.rint((chunk.astype(np.float64) - b_min) * ((a_max - a_min) / (b_max - b_min)) + a_min)
        if hu.size and (hu.min() < -32768 or hu.max() > 32767):
            return None
        hu = hu.astype(np.int16)
        back = hu_grid_to_values(torch.from_numpy(hu), grid).numpy()
        return hu if np.array_equal(back, chunk) else None

    step = max(1, flat.size // 65536)
    if to_hu(flat[::step]) is None:  # cheap rejection (resampled volumes fail here)
        return None
    out = np.empty(flat.shape, dtype=np.int16)
    for start in range(0, flat.size, _CHUNK):
        hu = to_hu(flat[start : start + _CHUNK])
        if hu is None:
            return None
        out[start : start + _CHUNK] = hu
    return out.reshape(values.shape)


def encode_array(tensor: torch.Tensor, grid: Sequence[float] | None) -> tuple[np.ndarray, dict]:
    """The array to store and its description (``dtype`` stored, ``decoded_dtype``, ``shape``, ``hu_grid``).

    float32 -> int16 HU when exact on ``grid``, else float16 when within float16's range, else float32 as is.
    """
    array = tensor.detach().cpu().numpy()
    info = {"decoded_dtype": str(array.dtype), "shape": list(array.shape), "hu_grid": None}
    stored = array
    if array.dtype == np.float32:
        hu = _exact_on_hu_grid(array, grid) if grid is not None else None
        if hu is not None:
            stored, info["hu_grid"] = hu, list(grid)
        elif np.isfinite(array).all() and np.abs(array).max(initial=0.0) <= FLOAT16_MAX:
            stored = array.astype(np.float16)
    info["dtype"] = str(stored.dtype)
    return np.ascontiguousarray(stored), info


def decode_array(stored: np.ndarray, info: dict) -> torch.Tensor:
    """A fresh tensor of ``info["decoded_dtype"]`` from a stored (memory-mapped, copy-on-write) array."""
    source = torch.from_numpy(stored)
    if info.get("hu_grid") is not None:
        return hu_grid_to_values(source, info["hu_grid"])
    dtype = getattr(torch, info["decoded_dtype"])
    if source.dtype == dtype:
        return source.clone()
    return source.to(dtype)
