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

Several processes may share one ``cache_dir`` (two runs, or ranks): every change of a space (a shard's commit,
a compaction, the removal of an interrupted write's temporary file) holds an exclusive ``fcntl.flock`` on
``<space>/.lock``, and the index is read under a shared one; shard numbers come from ``<space>/next_shard``,
bumped under the lock, so two writers never pick the same shard. Reads check that the rows they return are finite
and name the cache entry when one is not (a corrupted file; ``add`` never stores NaN/inf).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from common.data.atomic_io import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "NonFiniteEmbeddingError", "hash_identity", "hash_file_content", "hash_text"]

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


class NonFiniteEmbeddingError(ValueError):
    """A cached row holds NaN/inf; ``key`` is its item key and ``location`` its packed location."""

    def __init__(self, message: str, key: str | None, location: int) -> None:
        super().__init__(message, key, location)  # all arguments, so pickling (DataLoader workers) keeps them
        self.message, self.key, self.location = message, key, location

    def __str__(self) -> str:
        return self.message


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
        self._lock_file = self.root / ".lock"
        self._buffers = threading.local()  # per-thread gather buffer of the one-shard read
        with self._locked(fcntl.LOCK_EX):
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
            self._load_index()
            self._remove_stale_temporaries()

    @contextlib.contextmanager
    def _locked(self, mode: int):
        """Hold ``fcntl.flock(mode)`` on the space's lock file (shared: reading the index; exclusive: changing it)."""
        with open(self._lock_file, "a+") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _remove_stale_temporaries(self) -> None:
        """Remove temporary files of interrupted writes; only under the exclusive lock, which every writer holds
        while its temporary file exists, so another live writer's file is never removed."""
        for stale in self.root.glob(".shard_*.tmp"):
            stale.unlink(missing_ok=True)

    # ---- reading -----------------------------------------------------------------------------------------------
    def _load_index(self) -> None:
        """(Re)read every committed shard; the caller holds the lock."""
        self._index: dict[str, int] = {}  # key -> shard_id << 32 | row
        self._shards: dict[int, np.ndarray] = {}
        self.dim: int | None = None
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

    def refresh(self) -> None:
        """Re-read the committed shards, to see what another process has added since this space was opened."""
        with self._locked(fcntl.LOCK_SH):
            self._load_index()

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

        A compacted space (one shard, see :meth:`compact`) is one fancy index of its memory map into a reused
        float16 buffer, then one cast to ``dtype`` (torch's, vectorised). Otherwise one pass in storage order: the
        locations are sorted once, each shard's rows are gathered from its memory map with a single fancy index, the
        gathered block is put back in the asked order while still float16 (half the bytes to move) and converted
        once. The rows returned are checked finite (one sum of the block; the exact check only if the sum is not).

        Args:
            locations: (N,) int64 packed locations; any order, repeats allowed.
            dtype: output dtype; None keeps the storage dtype.

        Returns:
            (N, D) array, row ``i`` being the embedding at ``locations[i]``.

        Raises:
            KeyError: a location is not in this space. NonFiniteEmbeddingError: a row holds NaN/inf (names it).
        """
        if self.dim is None:
            raise KeyError(f"cache space {self.root} is empty")
        locations = np.asarray(locations, dtype=np.int64).reshape(-1)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if not len(locations):
            return np.empty((0, self.dim), dtype=dtype)
        out = self._read_one_shard(locations, dtype) if len(self._shards) == 1 else None
        if out is None:
            out = _convert(self._gather_in_storage_order(locations), dtype)
        if not math.isfinite(float(torch.from_numpy(out).sum())):  # NaN/inf -> the sum is not finite
            self._raise_if_not_finite(out, locations)
        return out

    def _read_one_shard(self, locations: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
        """The rows of a one-shard space, or None when a location points elsewhere (the general path decides)."""
        shard_id, shard = next(iter(self._shards.items()))
        rows = locations - (shard_id << 32)
        if rows.min() < 0 or rows.max() >= len(shard):
            return None
        if dtype == self.dtype:
            return np.take(shard, rows, axis=0)
        buffer = getattr(self._buffers, "block", None)
        if buffer is None or buffer.shape[0] < len(rows) or buffer.shape[1] != shard.shape[1]:
            buffer = self._buffers.block = np.empty((max(len(rows), 256), shard.shape[1]), dtype=self.dtype)
        gathered = np.take(shard, rows, axis=0, out=buffer[: len(rows)], mode="clip")  # range checked above
        return _convert(gathered, dtype)  # a fresh array: the buffer is reused by the next read

    def _gather_in_storage_order(self, locations: np.ndarray) -> np.ndarray:
        count = len(locations)
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
        return gathered

    def key_at(self, location: int) -> str | None:
        """The item key stored at ``location`` (a scan of the index: for error messages only)."""
        return next((key for key, at in self._index.items() if at == location), None)

    def _raise_if_not_finite(self, out: np.ndarray, locations: np.ndarray) -> None:
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if not len(bad):
            return  # the sum overflowed on large finite values (float32 storage)
        location = int(locations[bad[0]])
        key = self.key_at(location)
        shard = self.root / f"shard_{location >> 32:06d}.npy"
        raise NonFiniteEmbeddingError(
            f"cache entry {key} ({shard}, row {location & 0xFFFFFFFF}) holds NaN/inf ({len(bad)} of the "
            f"{len(out)} rows read); the file is corrupt: delete {shard.name} and its .keys.json (those rows are "
            "recomputed on the next run)",
            key,
            location,
        )

    def get(self, keys: Sequence[str], dtype: str | np.dtype | None = "float32") -> np.ndarray:
        """Rows for ``keys`` as (len(keys), D) of ``dtype`` (float32 by default; None keeps the storage dtype)."""
        if self.dim is None:
            raise KeyError(f"cache space {self.root} is empty")
        return self.read(self.locate(keys), dtype)

    # ---- writing -----------------------------------------------------------------------------------------------
    def _next_shard_id(self) -> int:
        """A shard number no writer has used (``next_shard`` bumped; the caller holds the exclusive lock)."""
        counter = self.root / "next_shard"
        on_disk = [int(p.name.split("_")[1].split(".")[0]) for p in self.root.glob("shard_*.keys.json")]
        stored = int(counter.read_text()) if counter.is_file() else 0
        shard_id = max(stored, max(on_disk, default=-1) + 1, max(self._shards, default=-1) + 1)
        write_text_atomic(str(shard_id + 1), counter)
        return shard_id

    def _write_shard(self, keys: Sequence[str], array_rows: Iterable[tuple[int, np.ndarray]], count: int) -> int:
        """Commit one shard of ``count`` rows (blocks ``(start, rows)``): the array, fsynced, then its keys file."""
        shard_id = self._next_shard_id()
        array_file = self.root / f"shard_{shard_id:06d}.npy"
        with atomic_path(array_file, suffix=".npy.tmp") as tmp:
            merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(count, self.dim))
            for start, block in array_rows:
                merged[start : start + len(block)] = block
            merged.flush()
            del merged
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        write_text_atomic(json.dumps(list(keys)), self.root / f"shard_{shard_id:06d}.keys.json")  # the commit mark
        self._shards[shard_id] = np.load(array_file, mmap_mode="r").view(np.ndarray)
        self._index.update(zip(keys, range(shard_id << 32, (shard_id << 32) + len(keys))))
        return shard_id

    def add(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Commit one shard: the array first, then its keys file (the commit mark), under the space's lock."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise ValueError(f"expected ({len(keys)}, D) embeddings, got shape {embeddings.shape}")
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"embedding dim {embeddings.shape[1]} differs from the cache's {self.dim}")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("refusing to cache non-finite (NaN/inf) embeddings")
        stored = embeddings.astype(self.dtype)
        if not np.all(np.isfinite(stored)):
            raise ValueError(
                f"embeddings overflow {self.dtype.name} (values up to {np.abs(embeddings).max():.3g}); "
                "use dtype float32"
            )
        with self._locked(fcntl.LOCK_EX):
            self.dim = embeddings.shape[1]
            self._write_shard(keys, [(0, stored)], len(keys))

    def compact(self, small_rows: int = 1 << 16, max_shards: int = 4, chunk_rows: int = 1 << 16) -> None:
        """Merge small shards, so that a shuffled batch is one fancy index per shard, few shards.

        Extraction commits a shard per encoded batch (crash-safe, but a million rows become ~30,000 small shards,
        and a shuffled training batch would then pay one read call per row). The shards under ``small_rows`` rows
        are merged into one, so the cost of a compaction grows with the rows just added, not the cache; only when
        that leaves more than ``max_shards`` shards is every shard merged into one (a whole rewrite, rare: each
        needs ``small_rows`` new rows first). The merged shard is written through a memory map in ``chunk_rows``
        blocks (RAM stays small), committed like any shard (array, then keys), and only then are the old shards
        uncommitted (keys file first) and removed: an interruption leaves the old shards, or both (the same rows;
        the newer shard wins on load). Runs under the exclusive lock, on the shards on disk (another process's
        included).
        """
        with self._locked(fcntl.LOCK_EX):
            self._load_index()
            sizes = {shard_id: len(shard) for shard_id, shard in self._shards.items()}
            small = [shard_id for shard_id, rows in sizes.items() if rows < small_rows]
            if len(sizes) - len(small) + (1 if small else 0) > max_shards:
                small = list(sizes)  # too many large shards: merge them all
            if len(small) <= 1:
                return
            merging = set(small)
            items = sorted(((k, at) for k, at in self._index.items() if at >> 32 in merging), key=lambda kv: kv[1])
            locations = np.fromiter((at for _, at in items), dtype=np.int64, count=len(items))
            blocks = (
                (start, self.read(locations[start : start + chunk_rows], dtype=None))
                for start in range(0, len(items), chunk_rows)
            )
            shard_id = self._write_shard([k for k, _ in items], blocks, len(items))
            for old in sorted(merging):
                (self.root / f"shard_{old:06d}.keys.json").unlink(missing_ok=True)
                (self.root / f"shard_{old:06d}.npy").unlink(missing_ok=True)
                del self._shards[old]
            logger.info(
                "cache space %s: %d shards merged into shard %d (%d rows); %d shards now",
                self.root,
                len(merging),
                shard_id,
                len(items),
                len(self._shards),
            )
