"""A preprocessed-volume cache keyed by the input file and the preprocessing, not by the manifest row.

MONAI's ``PersistentDataset`` hashes the whole data dict (manifest path, row number, labels, report) and,
without ``hash_transform``, nothing of the transforms: the same volume listed in seven manifests is cached
seven times, and changing ``hu_range`` returns the old volumes. :class:`VolumeCacheDataset` keeps MONAI's
caching and changes only the key: a fingerprint of each cached key's file (resolved path, size, modification
time; every file of a DICOM folder) plus a fingerprint of the deterministic transforms' settings. The fields of
the current row (labels, report, row number) always come from the row, never from the cached file.

Storage (one entry = one folder ``<key>/`` swapped in whole by :func:`~common.data.atomic_io.atomic_directory`, so a
kill mid-build leaves only a hidden ``.<key>.tmp-*`` folder that is never read as an entry; the build resumes at
the first missing entry): each cached array is a ``.npy`` file read back memory-mapped
(:mod:`common.data.volume_encoding`: int16 on the HU grid when that reproduces the float32 volume exactly, else
float16), the rest of the transformed item is a small ``item.pt`` (loaded with ``weights_only``), and ``entry.json``
describes it. :meth:`VolumeCacheDataset.build` fills the cache in DataLoader workers with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common.data.atomic_io import atomic_directory, write_json_atomic
from common.data.volume_encoding import decode_array, encode_array, find_hu_grid
from monai.data import MetaTensor, PersistentDataset
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

logger = logging.getLogger(__name__)

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
    """``PersistentDataset`` keyed by the files of ``cached_keys`` and the preprocessing settings, stored compactly.

    Args:
        data: manifest rows (dicts with the ``cached_keys`` paths).
        transform: the deterministic preprocessing (random transforms after it are applied per epoch).
        cache_dir: where the cached volumes go; shared by every manifest of the same files.
        cached_keys: the fields whose files are preprocessed and cached; every other field of a row is taken
            from the row on each read.
        **kwargs: passed to ``PersistentDataset``.

    Each cached volume comes back as a fresh tensor of the dtype the transform produced (float32 for CT-CLIP's
    ``(1, 240, 480, 480)``), decoded from the memory-mapped int16/float16 file; the first read of a row (the one
    that builds the entry) returns the same decoded values as every later read.
    """

    ENTRY_FILE = "entry.json"
    REST_FILE = "item.pt"

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

    def entry_path(self, item: Mapping) -> Path:
        """The entry folder of a row (``cache_dir/<file key><transform key>``)."""
        if self.cache_dir is None:
            raise ValueError("VolumeCacheDataset: cache_dir is None, so there are no cache entries")
        return self.cache_dir / (self._key(item).decode("utf-8") + self.transform_hash)

    def _cachecheck(self, item_transformed: Mapping) -> dict:
        row = {k: v for k, v in item_transformed.items() if k not in self.cached_keys}
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        entry = self.entry_path(item_transformed)
        cached = self._read_or_build(entry, item_transformed)
        return {**cached, **row}  # labels, report and row number are the current row's, not the cached file's

    def _read_or_build(self, entry: Path, item: Mapping) -> dict:
        if (entry / self.ENTRY_FILE).is_file():
            try:
                return self.read_entry(entry)
            except (OSError, ValueError, EOFError, RuntimeError) as err:
                logger.warning("unreadable cache entry %s (%s): removed and rebuilt", entry, err)
                shutil.rmtree(entry, ignore_errors=True)
        self.write_entry(entry, self._pre_transform(deepcopy(item)))
        return self.read_entry(entry)

    def write_entry(self, entry: Path, transformed: Mapping) -> None:
        """Write one entry folder atomically: ``<key>.npy`` per cached key, ``item.pt``, ``entry.json`` last."""
        arrays, description = {}, {}
        rest = {k: v for k, v in transformed.items() if k not in self.cached_keys}
        for key in self.cached_keys:
            value = transformed[key]
            tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
            stored, info = encode_array(tensor, find_hu_grid(self.transform, key))
            arrays[key], description[key] = stored, {**info, "file": f"{key}.npy"}
            if self.track_meta and isinstance(value, MetaTensor):
                rest[f"__meta__{key}"] = dict(value.meta)
        try:
            with atomic_directory(entry) as tmp:
                for key, stored in arrays.items():
                    np.save(tmp / description[key]["file"], stored, allow_pickle=False)
                torch.save(convert_to_tensor(rest, convert_numeric=False, track_meta=False), tmp / self.REST_FILE)
                write_json_atomic({"format": 1, "arrays": description}, tmp / self.ENTRY_FILE)
        except OSError:
            if not (entry / self.ENTRY_FILE).is_file():  # another worker swapped in the same entry first: use it
                raise

    def read_entry(self, entry: Path) -> dict:
        """The transformed item of one entry: arrays decoded from memory-mapped ``.npy`` files."""
        description = json.loads((entry / self.ENTRY_FILE).read_text())
        item = torch.load(entry / self.REST_FILE, weights_only=self.weights_only)
        for key, info in description["arrays"].items():
            stored = np.load(entry / info["file"], mmap_mode="r", allow_pickle=False)
            value = decode_array(stored, info)
            meta = item.pop(f"__meta__{key}", None)
            item[key] = MetaTensor(value, meta=meta) if self.track_meta and meta is not None else value
        return item

    def build(self, num_workers: int = 0, progress: bool = True, stale_seconds: float = 3600.0) -> dict:
        """Preprocess every row not yet cached, each distinct file once, in ``num_workers`` DataLoader workers.

        Resumable: entries already there are kept, a build killed half way restarts at the missing ones; hidden
        ``.<key>.tmp-*`` folders older than ``stale_seconds`` (left by a killed build) are removed.

        Returns:
            ``{"rows", "entries", "built", "cached", "seconds", "removed_partial"}``.
        """
        if self.cache_dir is None:
            raise ValueError("VolumeCacheDataset.build: cache_dir is None; set cache_dir to build a cache")
        start = time.perf_counter()
        removed = 0
        for partial in self.cache_dir.glob(".*.tmp-*"):
            if partial.is_dir() and time.time() - partial.stat().st_mtime > stale_seconds:
                shutil.rmtree(partial, ignore_errors=True)
                removed += 1
        unique: dict[Path, Mapping] = {}
        for row in self.data:
            unique.setdefault(self.entry_path(row), row)
        todo = [(entry, row) for entry, row in unique.items() if not (entry / self.ENTRY_FILE).is_file()]
        loader = DataLoader(_BuildJobs(self, todo), batch_size=None, num_workers=num_workers)
        for _ in tqdm(loader, total=len(todo), desc="building volume cache", disable=not progress, unit="vol"):
            pass
        summary = {
            "rows": len(self.data),
            "entries": len(unique),
            "built": len(todo),
            "cached": len(unique) - len(todo),
            "seconds": time.perf_counter() - start,
            "removed_partial": removed,
        }
        logger.info("volume cache %s: %s", self.cache_dir, summary)
        return summary


class _BuildJobs(Dataset):
    """One job per missing entry; a worker builds it and returns only its name (no volume crosses processes)."""

    def __init__(self, dataset: VolumeCacheDataset, todo: Sequence[tuple[Path, Mapping]]) -> None:
        self.dataset, self.todo = dataset, list(todo)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, index: int) -> str:
        entry, row = self.todo[index]
        if not (entry / VolumeCacheDataset.ENTRY_FILE).is_file():
            self.dataset.write_entry(entry, self.dataset._pre_transform(deepcopy(row)))
        return entry.name
