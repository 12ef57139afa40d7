"""Training batches read straight from the embedding cache, one gather per block of batches.

The keys are resolved to cache locations once (:meth:`EmbeddingCache.locate`); the batches are then read with
:meth:`EmbeddingCache.read` per modality (one fancy index of the memory-mapped shard into a reused float16 buffer,
one float16 -> float32 cast, a finiteness check of the block), so an epoch over millions of cached rows needs
neither the rows in RAM nor a Python step per row. :class:`ShuffledBatchSampler` hands each batch's indices over
as a :class:`BlockBatch`: a slice of one permutation per epoch (the order ``DataLoader(shuffle=True)`` would give)
that also names the ``read_ahead`` batches it is read with. :class:`CachedEmbeddingDataset` reads such a block of
batches in one call per modality and hands each batch out as its rows of the block, so the fixed cost of a read
(the call, the cast, the check, the label gather; about as much as the gather itself at 128 rows) is paid once
per block. :func:`batch_collate` passes the batch the dataset's ``__getitems__`` already assembled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from common.data.embedding_cache import EmbeddingCache, NonFiniteEmbeddingError

__all__ = ["BlockBatch", "CachedEmbeddingDataset", "ShuffledBatchSampler", "batch_collate", "cached_table_dataset"]

BLOCK_ROWS = 2048  # rows read at once by default: the read-ahead of ShuffledBatchSampler


@dataclass(frozen=True, eq=False)
class BlockBatch:
    """One batch's indices: ``block[start:stop]``, where ``block`` holds this batch and the next ones read with it.

    Acts as the (B,) index array it stands for (``len``, iteration, ``np.asarray``), so any dataset can take it;
    :class:`CachedEmbeddingDataset` reads the whole ``block`` once and serves every batch of it from that read.
    """

    block: np.ndarray
    start: int
    stop: int

    @property
    def indices(self) -> np.ndarray:
        return self.block[self.start : self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.indices, dtype=dtype)


class CachedEmbeddingDataset(torch.utils.data.Dataset):
    """Items ``{"image_embedding", "text_embedding", "label"}`` read from two cache spaces.

    Args:
        image_cache: the cache space of the image encoder.
        image_locations: (N,) int64 locations of each item's image embedding (from ``image_cache.locate``).
        text_cache: the cache space of the text encoder.
        text_locations: (N,) int64 locations of each item's text embedding.
        labels: (N,) labels.
        sources: optional (N,) descriptions of the items (e.g. "row 12 of manifest.csv"), named in errors.
    """

    def __init__(
        self,
        image_cache: EmbeddingCache,
        image_locations: np.ndarray,
        text_cache: EmbeddingCache,
        text_locations: np.ndarray,
        labels: Sequence[Any] | np.ndarray,
        sources: Sequence[str] | None = None,
    ) -> None:
        self.image_cache, self.text_cache = image_cache, text_cache
        self.image_locations = np.asarray(image_locations, dtype=np.int64)
        self.text_locations = np.asarray(text_locations, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels))
        self.sources = sources
        self._block: np.ndarray | None = None  # the read-ahead block last read, and its batch
        self._block_read: dict[str, torch.Tensor] = {}
        if not len(self.image_locations) == len(self.text_locations) == len(self.labels):
            raise ValueError(
                f"{len(self.image_locations)} image locations, {len(self.text_locations)} text locations and "
                f"{len(self.labels)} labels: one of each per item is needed"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, cache: EmbeddingCache, locations: np.ndarray, index: np.ndarray, field: str) -> torch.Tensor:
        try:
            return torch.from_numpy(cache.read(locations[index]))
        except NonFiniteEmbeddingError as err:
            item = int(index[np.flatnonzero(locations[index] == err.location)[0]])
            source = self.sources[item] if self.sources is not None else f"item {item} of the dataset"
            raise NonFiniteEmbeddingError(f"{source}, {field}: {err}", err.key, err.location) from None

    def _read_batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "image_embedding": self._read(self.image_cache, self.image_locations, index, "image_embedding"),
            "text_embedding": self._read(self.text_cache, self.text_locations, index, "text_embedding"),
            "label": self.labels[torch.from_numpy(index)],
        }

    def __getitems__(self, indices: Sequence[int] | np.ndarray | BlockBatch) -> dict[str, torch.Tensor]:
        """The batch at ``indices``: ``image_embedding`` (B, D_i) and ``text_embedding`` (B, D_t) float32, ``label``.

        A :class:`BlockBatch` is served from one read of its whole block (rows of the block's (K*B, D) tensors,
        which the block's other batches share), except in a DataLoader worker, which sees only some of the
        block's batches and reads its own.
        """
        if isinstance(indices, BlockBatch) and torch.utils.data.get_worker_info() is None:
            if self._block is not indices.block:
                self._block_read = self._read_batch(np.asarray(indices.block, dtype=np.int64))
                self._block = indices.block
            return {key: value[indices.start : indices.stop] for key, value in self._block_read.items()}
        return self._read_batch(np.asarray(indices, dtype=np.int64))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class ShuffledBatchSampler(torch.utils.data.Sampler):
    """Batches of a fresh permutation per epoch, each yielded as one :class:`BlockBatch` (no Python step per index).

    The permutation is drawn exactly as ``RandomSampler`` draws it (a seed from the global torch RNG unless a
    ``generator`` is given, then ``torch.randperm``), so ``DataLoader(batch_sampler=ShuffledBatchSampler(n, b,
    drop_last))`` visits the items in the same batches as ``DataLoader(shuffle=True, batch_size=b, drop_last=...)``.
    Every ``read_ahead`` consecutive batches form one block, which :class:`CachedEmbeddingDataset` reads at once.

    Args:
        num_items: the dataset's length N.
        batch_size: items per batch.
        drop_last: drop the last, incomplete batch.
        generator: optional torch generator of the permutations.
        read_ahead: batches per block (1: each batch read alone); None: as many as fit in ``BLOCK_ROWS`` rows
            (2,048: 16 batches of 128; larger blocks were slower, their float32 output no longer in cache).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        read_ahead: int | None = None,
    ) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if read_ahead is None:
            read_ahead = max(1, BLOCK_ROWS // int(batch_size))
        if int(read_ahead) <= 0:
            raise ValueError(f"read_ahead must be a positive integer, got {read_ahead}")
        self.num_items, self.batch_size, self.drop_last = int(num_items), int(batch_size), bool(drop_last)
        self.generator, self.read_ahead = generator, int(read_ahead)

    def __len__(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[BlockBatch]:
        generator = self.generator
        if generator is None:  # as RandomSampler: seeded from the global RNG, so set_determinism fixes the order
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(self.num_items, generator=generator).numpy()
        end = min(len(self) * self.batch_size, self.num_items)
        block_rows = self.batch_size * self.read_ahead
        for block_start in range(0, end, block_rows):
            block = order[block_start : min(block_start + block_rows, end)]
            for start in range(0, len(block), self.batch_size):
                yield BlockBatch(block, start, min(start + self.batch_size, len(block)))


def batch_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn`` for :class:`CachedEmbeddingDataset`: the batch is already assembled."""
    return batch


def cached_table_dataset(
    data: Sequence[dict[str, Any]], image_encoder, text_encoder, cache_dir: str | Path
) -> CachedEmbeddingDataset:
    """The rows ``data`` of :func:`~common.methods.projection.embedding_extraction.build_embedding_table` (one
    split) as a :class:`CachedEmbeddingDataset` reading the encoders' cache spaces under ``cache_dir``.

    Args:
        data: table rows with ``image_key``, ``text_key``, ``label`` (and ``row``/``manifest``, named in errors).
        image_encoder: the frozen image encoder whose ``identity()`` names its cache space.
        text_encoder: the frozen text encoder, likewise.
        cache_dir: root of the embedding cache the table was built in.
    """
    image_cache = EmbeddingCache(cache_dir, image_encoder.identity())
    text_cache = EmbeddingCache(cache_dir, text_encoder.identity())
    return CachedEmbeddingDataset(
        image_cache,
        image_cache.locate([row["image_key"] for row in data]),
        text_cache,
        text_cache.locate([row["text_key"] for row in data]),
        [row["label"] for row in data],
        sources=[
            f"row {row.get('row', i + 1)} of {row.get('manifest') or 'the manifest'}" for i, row in enumerate(data)
        ],
    )
