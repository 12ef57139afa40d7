"""A preprocessed-volume cache keyed by the input file and the preprocessing, not by the manifest row.

MONAI's ``PersistentDataset`` hashes the whole data dict (manifest path, row number, labels, report) and,
without ``hash_transform``, nothing of the transforms: the same volume listed in seven manifests is cached
seven times, and changing ``hu_range`` returns the old volumes. :class:`VolumeCacheDataset` keeps MONAI's
caching and changes only the key: a fingerprint of each cached key's file (resolved path, size, modification
time; every file of a DICOM folder) plus a fingerprint of the deterministic transforms' settings. The fields of
the current row (labels, report, row number) always come from the row, never from the cached file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset

__all__ = ["VolumeCacheDataset", "file_fingerprint", "transform_fingerprint"]


def file_fingerprint(path: str | Path) -> list:
    """``[resolved path, size, mtime_ns]`` of a file, or of every file in a folder (a DICOM series), sorted."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _describe(obj: Any, depth: int = 0, seen: set | None = None) -> Any:
    """A JSON-able, address-free description of a transform's settings (class names and attribute values)."""
    seen = set() if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(o, depth, seen) for o in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        array = np.asarray(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj)
        return [str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]
    if isinstance(obj, (set, frozenset)):
        return sorted(str(_describe(o, depth, seen)) for o in obj)
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if callable(obj) and not hasattr(obj, "__dict__"):
        return name
    if isinstance(obj, (torch.dtype, torch.device, Path)) or depth >= 6 or id(obj) in seen:
        return f"{name}:{obj}" if not hasattr(obj, "__dict__") else name
    seen.add(id(obj))
    attributes = getattr(obj, "__dict__", {})
    if getattr(obj, "__qualname__", None):  # functions and classes: their name is their setting
        return f"{name}:{obj.__module__}.{obj.__qualname__}"
    return {name: {k: _describe(v, depth + 1, seen) for k, v in sorted(attributes.items()) if not k.startswith("_")}}


def transform_fingerprint(transforms: Sequence[Callable]) -> bytes:
    """sha256 of the settings of ``transforms`` (for ``PersistentDataset(hash_transform=...)``).

    MONAI's ``json_hashing`` falls back to the class names for transforms (so ``hu_range`` is not in the hash)
    and ``pickle_hashing`` hashes reader objects and addresses; this hashes the public attributes instead.
    """
    text = json.dumps(_describe(list(transforms)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("utf-8")


class VolumeCacheDataset(PersistentDataset):
    """``PersistentDataset`` keyed by the files of ``cached_keys`` and the preprocessing settings.

    Args:
        data: manifest rows (dicts with the ``cached_keys`` paths).
        transform: the deterministic preprocessing (random transforms after it are applied per epoch).
        cache_dir: where the cached volumes go; shared by every manifest of the same files.
        cached_keys: the fields whose files are preprocessed and cached; every other field of a row is taken
            from the row on each read.
        **kwargs: passed to ``PersistentDataset``.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        transform: Callable,
        cache_dir: str | Path | None,
        cached_keys: Sequence[str] = ("image",),
        **kwargs: Any,
    ) -> None:
        self.cached_keys = tuple(cached_keys)
        kwargs.setdefault("hash_transform", transform_fingerprint)
        super().__init__(data=data, transform=transform, cache_dir=cache_dir, hash_func=self._key, **kwargs)

    def _key(self, item: Mapping) -> bytes:
        fingerprint = {key: file_fingerprint(item[key]) for key in self.cached_keys}
        return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode("utf-8")).hexdigest().encode("utf-8")

    def _cachecheck(self, item_transformed: Mapping) -> dict:
        cached = super()._cachecheck(item_transformed)
        row = {k: v for k, v in item_transformed.items() if k not in self.cached_keys}
        return {**cached, **row}  # labels, report and row number are the current row's, not the cached file's
