"""The embedding cache shared and damaged: concurrent writers, corrupted values, the compaction policy, the sampler."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.embedding_cache import EmbeddingCache, NonFiniteEmbeddingError
from common.methods.projection.cached_dataset import CachedEmbeddingDataset, ShuffledBatchSampler
from common.methods.projection.embedding_extraction import extract_embeddings

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = {"test": "shared cache"}


def _vector(key: str, dim: int = 8) -> np.ndarray:
    """A row determined by its key, exact in float16."""
    return np.arange(dim, dtype=np.float32) + int(hashlib.sha256(key.encode()).hexdigest()[:6], 16) % 1000


_WRITER = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    import numpy as np
    from common.data.embedding_cache import EmbeddingCache

    root, name = Path(sys.argv[1]), sys.argv[2]
    cache = EmbeddingCache(root / "cache", {"test": "shared cache"})
    (root / f"ready-{name}").touch()
    for _ in range(6000):  # both writers start together (at most a minute)
        if (root / "go").exists():
            break
        time.sleep(0.01)
    for batch in range(20):
        keys = [f"{name}-{batch}-{j}" for j in range(3)] + [f"shared-{batch}"]
        rows = [np.arange(8) + int(hashlib.sha256(k.encode()).hexdigest()[:6], 16) % 1000 for k in keys]
        cache.add(keys, np.stack(rows).astype(np.float32))
        if batch % 5 == 4:
            cache.compact()
        EmbeddingCache(root / "cache", {"test": "shared cache"})  # another run opening the space meanwhile
    """
)


def test_two_processes_write_one_cache_dir_and_both_read_correct_vectors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name], env=env, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    for _ in range(12000):  # both have opened the cache (at most two minutes), then start them together
        if all((tmp_path / f"ready-{n}").exists() for n in "ab") or any(w.poll() is not None for w in writers):
            break
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [w.communicate(timeout=240)[1].decode() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    cache = EmbeddingCache(tmp_path / "cache", IDENTITY)
    keys = [f"{n}-{b}-{j}" for n in "ab" for b in range(20) for j in range(3)] + [f"shared-{b}" for b in range(20)]
    np.testing.assert_array_equal(cache.get(keys), np.stack([_vector(k) for k in keys]))
    assert not list(cache.root.glob(".*tmp"))
    cache.compact(small_rows=10**6)
    reopened = EmbeddingCache(tmp_path / "cache", IDENTITY)
    np.testing.assert_array_equal(reopened.get(keys), np.stack([_vector(k) for k in keys]))


def _poison(space: Path, row: int) -> None:
    """Write NaN into one stored row of the (single) shard, as a damaged file would hold."""
    shard = next(space.glob("shard_*.npy"))
    array = np.load(shard, mmap_mode="r+")
    array[row, 0] = np.nan
    array.flush()


def test_a_nan_in_the_cache_is_named_with_its_entry_and_manifest_row(tmp_path, synthetic_rows, tiny_text_encoder):
    encoder = tiny_text_encoder(max_length=16)
    rows = synthetic_rows[:6]
    extract_embeddings(encoder, rows, "text", tmp_path, batch_size=4, progress=False)
    space = next(p for p in tmp_path.iterdir() if p.is_dir())
    cache = EmbeddingCache(tmp_path, encoder.identity())
    key = cache.key_at(min(cache._index.values()))  # the entry stored in row 0
    _poison(space, 0)
    with pytest.raises(
        NonFiniteEmbeddingError, match=rf"text embedding of row \d+ of .*manifest.csv, field 'report'.*{key}"
    ):
        extract_embeddings(encoder, rows, "text", tmp_path, batch_size=4, progress=False)
    cache = EmbeddingCache(tmp_path, encoder.identity())
    locations = np.sort(np.array(list(cache._index.values())))
    dataset = CachedEmbeddingDataset(
        cache,
        locations,
        cache,
        locations[::-1],
        np.arange(len(locations)),
        sources=[f"study {i}" for i in range(len(locations))],
    )
    dataset.__getitems__([1, 2])  # rows without the NaN read fine
    with pytest.raises(NonFiniteEmbeddingError, match=r"study 0, image_embedding: cache entry .* row 0\) holds NaN"):
        dataset.__getitems__([1, 0])


def test_compaction_merges_the_small_shards_and_rewrites_all_only_past_the_bound(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    cache.add([f"big{i}" for i in range(64)], np.stack([_vector(f"big{i}") for i in range(64)]))
    big = next(cache.root.glob("shard_*.npy"))
    inode = big.stat().st_ino
    for batch in range(5):
        keys = [f"s{batch}-{j}" for j in range(4)]
        cache.add(keys, np.stack([_vector(k) for k in keys]))
    cache.compact(small_rows=32, max_shards=3)  # the 5 small shards become one; the big one is left as it is
    assert len(list(cache.root.glob("shard_*.npy"))) == 2 and big.stat().st_ino == inode
    for extra in range(2):  # two more large shards: 4 > max_shards=3, so everything is merged into one
        keys = [f"x{extra}-{j}" for j in range(40)]
        cache.add(keys, np.stack([_vector(k) for k in keys]))
    cache.compact(small_rows=32, max_shards=3)
    assert len(list(cache.root.glob("shard_*.npy"))) == 1 and not big.exists()
    keys = [f"big{i}" for i in range(64)] + [f"s{b}-{j}" for b in range(5) for j in range(4)] + ["x1-39"]
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, IDENTITY).get(keys), np.stack([_vector(k) for k in keys]))


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_batch_sampler_gives_the_batches_of_shuffle_true(drop_last):
    reference = torch.utils.data.DataLoader(range(50), batch_size=8, shuffle=True, drop_last=drop_last)
    torch.manual_seed(3)
    expected = [batch.tolist() for batch in reference]
    torch.manual_seed(3)
    sampler = ShuffledBatchSampler(50, 8, drop_last=drop_last)
    loader = torch.utils.data.DataLoader(range(50), batch_sampler=sampler, collate_fn=torch.as_tensor)
    got = [batch.tolist() for batch in loader]  # the DataLoader draws its base seed first, as for shuffle=True
    assert got == expected and len(sampler) == len(expected)


def test_a_block_of_batches_is_read_once_and_each_batch_gets_its_own_rows(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    keys = [f"r{i}" for i in range(45)]
    rows = np.stack([_vector(k) for k in keys])
    cache.add(keys, rows)
    dataset = CachedEmbeddingDataset(cache, cache.locate(keys), cache, cache.locate(keys[::-1]), np.arange(45))
    reads = []
    read = cache.read
    cache.read = lambda locations, *args: reads.append(len(locations)) or read(locations, *args)
    sampler = ShuffledBatchSampler(45, 8, generator=torch.Generator().manual_seed(0), read_ahead=3)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda batch: batch)
    seen = []
    for batch in loader:
        labels = batch["label"].numpy()
        np.testing.assert_array_equal(batch["image_embedding"].numpy(), rows[labels])
        np.testing.assert_array_equal(batch["text_embedding"].numpy(), rows[44 - labels])
        seen.append(labels.tolist())
    assert [len(s) for s in seen] == [8, 8, 8, 8, 8, 5] and sorted(sum(seen, [])) == list(range(45))
    assert reads == [24, 24, 21, 21]  # two blocks (3 batches, then 2 + the rest), each read once per tower
