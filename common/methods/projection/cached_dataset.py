"""Training batches read straight from the embedding cache, one gather per batch.

The keys are resolved to cache locations once (:meth:`EmbeddingCache.locate`); every batch is then a single
:meth:`EmbeddingCache.read` per modality (sorted into storage order, one fancy index per memory-mapped shard, one
float16 -> float32 cast, put back in the sampled order), so an epoch over millions of cached rows needs neither
the rows in RAM nor a Python step per row. Use it with :func:`batch_collate`: the dataset's ``__getitems__``
already returns the whole batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from common.data.embedding_cache import EmbeddingCache

__all__ = ["CachedEmbeddingDataset", "batch_collate"]


class CachedEmbeddingDataset(torch.utils.data.Dataset):
    """Items ``{"image_embedding", "text_embedding", "label"}`` read from two cache spaces.

    Args:
        image_cache: the cache space of the image encoder.
        image_locations: (N,) int64 locations of each item's image embedding (from ``image_cache.locate``).
        text_cache: the cache space of the text encoder.
        text_locations: (N,) int64 locations of each item's text embedding.
        labels: (N,) labels.
    """

    def __init__(
        self,
        image_cache: EmbeddingCache,
        image_locations: np.ndarray,
        text_cache: EmbeddingCache,
        text_locations: np.ndarray,
        labels: Sequence[Any] | np.ndarray,
    ) -> None:
        self.image_cache, self.text_cache = image_cache, text_cache
        self.image_locations = np.asarray(image_locations, dtype=np.int64)
        self.text_locations = np.asarray(text_locations, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels))
        if not len(self.image_locations) == len(self.text_locations) == len(self.labels):
            raise ValueError(
                f"{len(self.image_locations)} image locations, {len(self.text_locations)} text locations and "
                f"{len(self.labels)} labels: one of each per item is needed"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch at ``indices``: ``image_embedding`` (B, D_i) and ``text_embedding`` (B, D_t) float32, ``label``."""
        index = np.asarray(indices, dtype=np.int64)
        return {
            "image_embedding": torch.from_numpy(self.image_cache.read(self.image_locations[index])),
            "text_embedding": torch.from_numpy(self.text_cache.read(self.text_locations[index])),
            "label": self.labels[torch.from_numpy(index)],
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def batch_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn`` for :class:`CachedEmbeddingDataset`: the batch is already assembled."""
    return batch
