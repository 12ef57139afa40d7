"""Training batches read straight from the embedding cache, one gather per batch.

The keys are resolved to cache locations once (:meth:`EmbeddingCache.locate`); every batch is then a single
:meth:`EmbeddingCache.read` per modality (one fancy index of the memory-mapped shard into a reused float16 buffer,
one float16 -> float32 cast, a finiteness check of the block), so an epoch over millions of cached rows needs
neither the rows in RAM nor a Python step per row. :class:`ShuffledBatchSampler` hands each batch's indices over
as one array (a slice of one permutation per epoch; the order ``DataLoader(shuffle=True)`` would give), and
:func:`batch_collate` passes the batch the dataset's ``__getitems__`` already assembled.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from common.data.embedding_cache import EmbeddingCache, NonFiniteEmbeddingError

__all__ = ["CachedEmbeddingDataset", "ShuffledBatchSampler", "batch_collate"]


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

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The batch at ``indices``: ``image_embedding`` (B, D_i) and ``text_embedding`` (B, D_t) float32, ``label``."""
        index = np.asarray(indices, dtype=np.int64)
        return {
            "image_embedding": self._read(self.image_cache, self.image_locations, index, "image_embedding"),
            "text_embedding": self._read(self.text_cache, self.text_locations, index, "text_embedding"),
            "label": self.labels[torch.from_numpy(index)],
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class ShuffledBatchSampler(torch.utils.data.Sampler):
    """Batches of a fresh permutation per epoch, each yielded as one int64 array (no Python step per index).

    The permutation is drawn exactly as ``RandomSampler`` draws it (a seed from the global torch RNG unless a
    ``generator`` is given, then ``torch.randperm``), so ``DataLoader(batch_sampler=ShuffledBatchSampler(n, b,
    drop_last))`` visits the items in the same batches as ``DataLoader(shuffle=True, batch_size=b, drop_last=...)``.

    Args:
        num_items: the dataset's length N.
        batch_size: items per batch.
        drop_last: drop the last, incomplete batch.
        generator: optional torch generator of the permutations.
    """

    def __init__(
        self, num_items: int, batch_size: int, drop_last: bool = False, generator: torch.Generator | None = None
    ) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.num_items, self.batch_size, self.drop_last = int(num_items), int(batch_size), bool(drop_last)
        self.generator = generator

    def __len__(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        generator = self.generator
        if generator is None:  # as RandomSampler: seeded from the global RNG, so set_determinism fixes the order
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(self.num_items, generator=generator).numpy()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


def batch_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn`` for :class:`CachedEmbeddingDataset`: the batch is already assembled."""
    return batch
