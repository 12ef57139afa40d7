"""Compact storage of preprocessed CT volumes: int16 on the HU grid (exact when the HU are integers).

CT-CLIP's preprocessing ends in ``ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True)``
(then padding with -1 and a transpose), so a float32 volume of ``(1, 240, 480, 480)`` (221 MB) whose values are
integer HU before that map is stored as int16 HU (110 MB) and decoded by the same arithmetic bit for bit. Whether
that holds is checked on the data, never assumed: after trilinear resampling the HU are not integers, and the
volume is stored as int16 in 1/32-HU steps (110 MB; error <= 1/64 HU = 1.6e-5 on [-1, 1]). float16 (error up to
2.4e-4 on [-1, 1], which moved zero-shot probabilities of the full-size CTViT by up to 3e-3 at logit scale 100)
is used only when no HU grid is known. Integer and other arrays are stored as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache

import numpy as np
import torch
from monai.transforms import Compose, RandomizableTrait, ScaleIntensityRanged, Transform

__all__ = ["decode_array", "encode_array", "find_hu_grid", "hu_grid_decoder", "hu_grid_to_values"]

FLOAT16_MAX = 65504.0
_CHUNK = 1 << 22
# int16 codes per step of the decode: the step's float32 (512 KiB) stays in the L2 cache through the whole ufunc chain
_DECODE_CHUNK = 1 << 17


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


def hu_grid_to_values(hu: torch.Tensor, grid: Sequence[float], steps_per_hu: int = 1) -> torch.Tensor:
    """float32 values of HU stored as integers in ``1 / steps_per_hu`` HU steps, by the arithmetic of MONAI's
    ``ScaleIntensityRange`` (same order of operations, so integer HU give its float32 results bit for bit).

    Args:
        hu: integer HU (times ``steps_per_hu``, a power of two: the division is exact) of any shape.
        grid: ``(a_min, a_max, b_min, b_max)``.
        steps_per_hu: steps per HU of the stored integers.
    """
    a_min, a_max, b_min, b_max = grid
    img = hu.to(torch.float32, copy=True)  # one new tensor; in place from here (7 passes of new tensors were 8x slower)
    if steps_per_hu != 1:
        img.div_(steps_per_hu)
    img.sub_(a_min).div_(a_max - a_min)
    img.mul_(b_max - b_min).add_(b_min)
    return img.clamp_(b_min, b_max)


def _quantise(values: np.ndarray, grid: Sequence[float], steps_per_hu: int, exact: bool) -> tuple[np.ndarray, float]:
    """int16 of ``values`` (float32) in ``1 / steps_per_hu`` HU steps and the largest decoding error; with ``exact``,
    (None, inf) unless :func:`hu_grid_to_values` reproduces every value bit for bit."""
    a_min, a_max, b_min, b_max = grid
    flat = values.reshape(-1)

    def chunk_to_int(chunk: np.ndarray) -> tuple[np.ndarray | None, float]:
        hu = np.rint(((chunk.astype(np.float64) - b_min) * ((a_max - a_min) / (b_max - b_min)) + a_min) * steps_per_hu)
        if hu.size and (hu.min() < -32768 or hu.max() > 32767):
            return None, float("inf")
        hu = hu.astype(np.int16)
        back = hu_grid_to_values(torch.from_numpy(hu), grid, steps_per_hu).numpy()
        error = float(np.abs(back - chunk).max(initial=0.0))
        return (None, float("inf")) if exact and error > 0 else (hu, error)

    step = max(1, flat.size // 65536)
    if chunk_to_int(flat[::step])[0] is None:  # cheap rejection (e.g. resampled volumes are not integer HU)
        return None, float("inf")
    out, worst = np.empty(flat.shape, dtype=np.int16), 0.0
    for start in range(0, flat.size, _CHUNK):
        hu, error = chunk_to_int(flat[start : start + _CHUNK])
        if hu is None:
            return None, float("inf")
        out[start : start + _CHUNK], worst = hu, max(worst, error)
    return out.reshape(values.shape), worst


def encode_array(tensor: torch.Tensor, grid: Sequence[float] | None) -> tuple[np.ndarray, dict]:
    """The array to store and its description (``dtype`` stored, ``decoded_dtype``, ``shape``, ``hu_grid``,
    ``steps_per_hu``, ``max_abs_error``).

    float32 on a known ``grid`` -> int16 HU when that is exact (1 step per HU), else int16 in the finest power-of-two
    fraction of a HU that spans the range (1/32 HU for [-1000, 1000]: error <= 1/64 HU, 1.6e-5 on [-1, 1], 16x
    below float16's); without a grid float16 when within its range; anything else as it is.
    """
    array = tensor.detach().cpu().numpy()
    info = {"decoded_dtype": str(array.dtype), "shape": list(array.shape), "hu_grid": None, "max_abs_error": 0.0}
    stored = array
    if array.dtype == np.float32 and grid is not None:
        hu, error = _quantise(array, grid, 1, exact=True)
        steps = 1
        if hu is None:
            steps = 2 ** int(np.floor(np.log2(32767 / max(abs(grid[0]), abs(grid[1]), 1.0))))
            hu, error = _quantise(array, grid, steps, exact=False) if steps >= 1 else (None, 0.0)
        if hu is not None:
            stored, info["hu_grid"], info["steps_per_hu"], info["max_abs_error"] = hu, list(grid), steps, error
    if stored is array and array.dtype == np.float32:
        if np.isfinite(array).all() and np.abs(array).max(initial=0.0) <= FLOAT16_MAX:
            stored = array.astype(np.float16)
            info["max_abs_error"] = float(np.abs(stored.astype(np.float32) - array).max(initial=0.0))
    info["dtype"] = str(stored.dtype)
    return np.ascontiguousarray(stored), info


def _ufunc_steps(grid: Sequence[float], steps_per_hu: int, reduced: bool) -> Callable:
    """``steps(codes, out)``: :func:`hu_grid_to_values` of int16 ``codes`` without its final clamp, written into the
    float32 ``out`` by numpy ufuncs in place.

    ``reduced`` folds the exact steps (the cast, the division by a power of two, the multiplication by
    ``b_max - b_min``) into one offset and one divisor: 3 ufuncs instead of 5.
    """
    a_min, a_max, b_min, b_max = (np.float64(v) for v in grid)
    f32 = np.float32
    if reduced:
        offset, divisor = f32(-a_min * steps_per_hu), f32(steps_per_hu * (a_max - a_min) / (b_max - b_min))

        def steps(codes: np.ndarray, out: np.ndarray) -> None:
            np.copyto(out, codes, casting="safe")  # the plain cast loop: 3x faster than a casting np.add
            np.add(out, offset, out=out)
            np.divide(out, divisor, out=out)
            np.add(out, f32(b_min), out=out)

        return steps

    def steps(codes: np.ndarray, out: np.ndarray) -> None:  # hu_grid_to_values' steps, one for one
        np.divide(codes, f32(steps_per_hu), out=out, dtype=f32)
        np.subtract(out, f32(a_min), out=out)
        np.divide(out, f32(a_max - a_min), out=out)
        np.multiply(out, f32(b_max - b_min), out=out)
        np.add(out, f32(b_min), out=out)

    return steps


@lru_cache(maxsize=64)
def hu_grid_decoder(grid: tuple[float, float, float, float], steps_per_hu: int = 1) -> Callable | None:
    """``decode(codes, out)``: the fastest numpy ufunc chain that gives :func:`hu_grid_to_values` bit for bit.

    The decoded value is a function of the stored code alone, so checking all 65,536 int16 codes once per grid
    proves the chain equal to the reference on every volume. The clamp (the chain's dearest ufunc) is skipped for
    a chunk whose codes all lie in the encoder's range ``[a_min, a_max] * steps_per_hu`` when the unclamped chain
    equals the reference on every code of that range. The function's ``reduced`` and ``unclamped_codes`` (the
    ``(first, last)`` codes that skip the clamp, or None) say which chain it is. Returns None when no chain matches
    (then :func:`decode_array` uses :func:`hu_grid_to_values` itself).
    """
    codes = np.arange(65536, dtype=np.uint16).view(np.int16)
    reference = hu_grid_to_values(torch.from_numpy(codes), grid, steps_per_hu).numpy().view(np.uint32)
    low, high = np.float32(grid[2]), np.float32(grid[3])
    first = int(np.clip(np.ceil(min(grid[0], grid[1]) * steps_per_hu), -32768, 32767))
    last = int(np.clip(np.floor(max(grid[0], grid[1]) * steps_per_hu), -32768, 32767))
    in_range = (codes >= first) & (codes <= last)
    unclamped = np.empty(codes.shape, dtype=np.float32)
    for reduced in (True, False):
        steps = _ufunc_steps(grid, steps_per_hu, reduced)
        steps(codes, unclamped)
        if not np.array_equal(np.clip(unclamped, low, high).view(np.uint32), reference):
            continue
        bounds = (first, last) if np.array_equal(unclamped.view(np.uint32)[in_range], reference[in_range]) else None

        def decode(chunk: np.ndarray, out: np.ndarray, steps: Callable = steps, bounds: tuple | None = bounds) -> None:
            steps(chunk, out)
            if bounds is None or chunk.min(initial=bounds[0]) < bounds[0] or chunk.max(initial=bounds[1]) > bounds[1]:
                np.clip(out, low, high, out=out)

        decode.reduced, decode.unclamped_codes = reduced, bounds  # which chain; the codes that skip the clamp
        return decode
    return None


def decode_array(stored: np.ndarray, info: dict) -> torch.Tensor:
    """A fresh tensor of ``info["decoded_dtype"]`` from a stored (memory-mapped) array, in one pass over it.

    The output is allocated by numpy, which asks the kernel for huge pages on large buffers (faulting in a
    221 MB ``torch.empty`` 4 KiB at a time took 5x as long on the benchmark's machine), and filled
    ``_DECODE_CHUNK`` codes at a time, each chunk through the whole ufunc chain while it is in the cache.
    HU-grid values equal :func:`hu_grid_to_values` bit for bit (:func:`hu_grid_decoder`).
    """
    source = np.asarray(stored)  # a plain ndarray view of the memory map (no copy)
    out = np.empty(source.shape, dtype=np.dtype(info["decoded_dtype"]))
    grid = info.get("hu_grid")
    if grid is None:
        np.copyto(out, source, casting="safe")
        return torch.from_numpy(out)
    steps_per_hu = int(info.get("steps_per_hu", 1))
    decode = hu_grid_decoder(tuple(float(v) for v in grid), steps_per_hu)
    if decode is None or out.dtype != np.float32 or source.dtype != np.int16:
        return hu_grid_to_values(torch.from_numpy(np.array(source)), grid, steps_per_hu)
    codes, values = source.reshape(-1), out.reshape(-1)
    for start in range(0, codes.size, _DECODE_CHUNK):
        decode(codes[start : start + _DECODE_CHUNK], values[start : start + _DECODE_CHUNK])
    return torch.from_numpy(out)
