"""A content-addressed on-disk cache of frozen embeddings: sharded float16 ``.npy`` files, memory-mapped.

Layout (one *space* per encoder identity)::

    <cache_dir>/<space_key>/identity.json          what the key was made of (model hash, preprocessing, pooling, ...)
    <cache_dir>/<space_key>/shard_000000.npy        (n, D) float16, written with a temp name then renamed
    <cache_dir>/<space_key>/shard_000000.keys.json  the item keys of those rows; written last = the shard commit

``space_key`` hashes the encoder identity, so a change of model weights, preprocessing or pooling starts a new
space and recomputes everything it touches. Inside a space, each item is keyed by a hash of its own content
(file bytes, or the cleaned text), so a changed file recomputes that file alone and a second run recomputes
nothing. A shard is visible only once its ``.keys.json`` exists, so an interrupted extraction leaves no
half-written entry: it resumes from the committed shards. No pickle anywhere (method notes §4, problem 10).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from common.data.atomic_io import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "hash_identity", "hash_file_content", "hash_text"]

_CHUNK = 1 << 20


def hash_identity(identity: Mapping[str, Any]) -> str:
    """sha256 of a JSON-serialisable identity dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def hash_file_content(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file (with its relative name) in a folder such as a DICOM series."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} is an empty folder: nothing to hash")
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _convert(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` as ``dtype``; float16 -> float32 through torch, whose cast is vectorised (numpy's is ~20x slower)."""
    if array.dtype == dtype:
        return array
    if array.dtype == np.float16 and dtype == np.float32:
        return torch.from_numpy(array).float().numpy()
    return array.astype(dtype)


class EmbeddingCache:
    """One cache space: item key -> embedding row, backed by committed float16 shards.

    Args:
        cache_dir: root folder of all spaces.
        identity: what makes embeddings comparable (model weight hash, preprocessing, pooling, dtype, code version).
        dtype: storage dtype (float16 halves the size; embeddings are restored to float32 on read).
    """

    def __init__(self, cache_dir: str | Path, identity: Mapping[str, Any], dtype: str = "float16") -> None:
        self.identity = dict(identity)
        self.space_key = hash_identity(self.identity)
        self.dtype = np.dtype(dtype)
        self.root = Path(cache_dir) / self.space_key[:24]
        self.root.mkdir(parents=True, exist_ok=True)
        identity_file = self.root / "identity.json"
        if identity_file.is_file():
            stored = json.loads(identity_file.read_text())
            if stored.get("space_key") != self.space_key:
                raise ValueError(
                    f"cache space {self.root} belongs to another identity (hash prefix collision); delete it"
                )
        else:
            payload = json.dumps(
                {"space_key": self.space_key, "dtype": self.dtype.name, "identity": self.identity},
                indent=2,
                default=str,
            )
            write_text_atomic(payload, identity_file)
        self._index: dict[str, int] = {}  # key -> shard_id << 32 | row
        self._shards: dict[int, np.ndarray] = {}
        self.dim: int | None = None
        self._load_index()

    # ---- reading -----------------------------------------------------------------------------------------------
    def _load_index(self) -> None:
        for keys_file in sorted(self.root.glob("shard_*.keys.json")):
            shard_id = int(keys_file.name.split("_")[1].split(".")[0])
            array_file = self.root / f"shard_{shard_id:06d}.npy"
            if not array_file.is_file():
                logger.warning("cache shard %s has keys but no array; ignoring it", keys_file)
                continue
            keys = json.loads(keys_file.read_text())
            array = np.load(array_file, mmap_mode="r")
            if array.shape[0] != len(keys):
                logger.warning(
                    "cache shard %s has %d rows for %d keys; ignoring it", array_file, array.shape[0], len(keys)
                )
                continue
            self._shards[shard_id] = array.view(np.ndarray)  # plain view of the map: no np.memmap overhead per read
            self.dim = array.shape[1]
            self._index.update(zip(keys, range(shard_id << 32, (shard_id << 32) + len(keys))))
        for stale in self.root.glob(".shard_*.tmp"):  # left by an interrupted write: never committed
            stale.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not yet in the cache, in order, without duplicates."""
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    def locate(self, keys: Sequence[str]) -> np.ndarray:
        """Resolve keys to packed locations (``shard_id << 32 | row``); a missing key is a KeyError naming it.

        One dictionary lookup per key (about a second per million): resolve once, then :meth:`read` as often as needed.
        """
        try:
            return np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as err:
            raise KeyError(f"embedding {str(err.args[0])[:16]}... not in cache space {self.root}") from None

    def read(self, locations: np.ndarray, dtype: str | np.dtype | None = "float32") -> np.ndarray:
        """Rows at ``locations`` (from :meth:`locate`), in that order, as (N, D) of ``dtype`` (None: storage dtype).

        A compacted space (one shard, see :meth:`compact`) is one fancy index of its memory map. Otherwise one pass
        in storage order: the locations are sorted once, each shard's rows are gathered from its memory
        map with a single fancy index, the gathered block is put back in the asked order while still float16
        (half the bytes to move) and converted to ``dtype`` once, with torch's vectorised cast.

        Args:
            locations: (N,) int64 packed locations; any order, repeats allowed.
            dtype: output dtype; None keeps the storage dtype.

        Returns:
            (N, D) array, row ``i`` being the embedding at ``locations[i]``.
        """
        if self.dim is None:
            raise KeyError(f"cache space {self.root} is empty")
        locations = np.asarray(locations, dtype=np.int64).reshape(-1)
        count = len(locations)
        if len(self._shards) == 1 and count:  # one map (a compacted space): a single fancy index, in the asked order
            shard_id, shard = next(iter(self._shards.items()))
            rows = locations & 0xFFFFFFFF
            if not ((locations >> 32) == shard_id).all() or rows.max() >= len(shard):
                raise KeyError(f"a location is not in cache space {self.root}")
            return _convert(np.take(shard, rows, axis=0), self.dtype if dtype is None else np.dtype(dtype))
        order = np.argsort(locations, kind="stable")
        ordered = locations[order]
        shard_ids, rows = ordered >> 32, ordered & 0xFFFFFFFF
        cuts = (np.flatnonzero(shard_ids[1:] != shard_ids[:-1]) + 1).tolist()
        gathered = np.empty((count, self.dim), dtype=self.dtype)
        for start, stop in zip([0, *cuts], [*cuts, count]):
            shard = self._shards.get(int(shard_ids[start]))
            if shard is None or rows[stop - 1] >= len(shard):  # rows are sorted: the last is the largest
                raise KeyError(f"location {int(ordered[stop - 1])} is not in cache space {self.root}")
            np.take(shard, rows[start:stop], axis=0, out=gathered[start:stop], mode="clip")  # checked above
        if count > 1:
            inverse = np.empty_like(order)
            inverse[order] = np.arange(count)
            gathered = np.take(gathered, inverse, axis=0)  # back to the asked order, still in storage dtype
        return _convert(gathered, self.dtype if dtype is None else np.dtype(dtype))

    def get(self, keys: Sequence[str], dtype: str | np.dtype | None = "float32") -> np.ndarray:
        """Rows for ``keys`` as (len(keys), D) of ``dtype`` (float32 by default; None keeps the storage dtype)."""
        if self.dim is None:
            raise KeyError(f"cache space {self.root} is empty")
        return self.read(self.locate(keys), dtype)

    # ---- writing -----------------------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Commit one shard: the array first, then its keys file (the commit mark)."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise ValueError(f"expected ({len(keys)}, D) embeddings, got shape {embeddings.shape}")
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"embedding dim {embeddings.shape[1]} differs from the cache's {self.dim}")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("refusing to cache non-finite (NaN/inf) embeddings")
        shard_id = max(self._shards, default=-1) + 1
        array_file = self.root / f"shard_{shard_id:06d}.npy"
        stored = embeddings.astype(self.dtype)
        if not np.all(np.isfinite(stored)):
            raise ValueError(
                f"embeddings overflow {self.dtype.name} (values up to {np.abs(embeddings).max():.3g}); "
                "use dtype float32"
            )
        with atomic_path(array_file, suffix=".npy.tmp") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, stored)
                handle.flush()
                os.fsync(handle.fileno())
        write_text_atomic(json.dumps(list(keys)), self.root / f"shard_{shard_id:06d}.keys.json")  # the commit mark
        self._shards[shard_id] = np.load(array_file, mmap_mode="r").view(np.ndarray)
        self.dim = embeddings.shape[1]
        self._index.update(zip(keys, range(shard_id << 32, (shard_id << 32) + len(keys))))

    def compact(self, chunk_rows: int = 1 << 16) -> None:
        """Merge every committed shard into one, so that a shuffled batch is one fancy index instead of one per shard.

        Extraction commits a shard per encoded batch (crash-safe, but a million rows become ~30,000 small shards,
        and a shuffled training batch would then pay one read call per row). The merged shard is written through a
        memory map in ``chunk_rows`` blocks (RAM stays small), committed like any shard (array, then keys), and
        only then are the old shards uncommitted (keys file first) and removed: an interruption leaves the old
        shards, or both (the same rows; the newer shard wins on load).
        """
        if len(self._shards) <= 1:
            return
        items = sorted(self._index.items(), key=lambda item: item[1])  # storage order
        locations = np.fromiter((location for _, location in items), dtype=np.int64, count=len(items))
        old_ids, shard_id = sorted(self._shards), max(self._shards) + 1
        array_file = self.root / f"shard_{shard_id:06d}.npy"
        with atomic_path(array_file, suffix=".npy.tmp") as tmp:
            merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(len(items), self.dim))
            for start in range(0, len(items), chunk_rows):
                merged[start : start + chunk_rows] = self.read(locations[start : start + chunk_rows], dtype=None)
            merged.flush()
            del merged
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        keys = [key for key, _ in items]
        write_text_atomic(json.dumps(keys), self.root / f"shard_{shard_id:06d}.keys.json")  # the commit mark
        for old in old_ids:
            (self.root / f"shard_{old:06d}.keys.json").unlink(missing_ok=True)
            (self.root / f"shard_{old:06d}.npy").unlink(missing_ok=True)
        logger.info("cache space %s: %d shards compacted into one of %d rows", self.root, len(old_ids), len(keys))
        self._shards = {shard_id: np.load(array_file, mmap_mode="r").view(np.ndarray)}
        self._index = dict(zip(keys, range(shard_id << 32, (shard_id << 32) + len(keys))))
