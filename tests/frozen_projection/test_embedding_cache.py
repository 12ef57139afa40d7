"""The embedding cache: hits, misses, invalidation, resumption, and bad rows named."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from common.methods.projection.embedding_extraction import BadRowError, extract_embeddings


def _counting(encoder):
    """Count the items the encoder actually embeds."""
    calls = {"items": 0}
    forward = encoder.forward

    def counted(batch):
        calls["items"] += len(batch)
        return forward(batch)

    encoder.forward = counted
    return calls


def test_second_run_recomputes_nothing(tmp_path, synthetic_rows, tiny_image_encoder, tiny_text_encoder):
    for modality, build in (("image", tiny_image_encoder), ("text", tiny_text_encoder)):
        encoder = build()
        calls = _counting(encoder)
        first, kept = extract_embeddings(encoder, synthetic_rows, modality, tmp_path, batch_size=16, progress=False)
        computed = calls["items"]
        assert computed > 0 and len(kept) == len(synthetic_rows)
        second, _ = extract_embeddings(encoder, synthetic_rows, modality, tmp_path, batch_size=16, progress=False)
        assert calls["items"] == computed  # all hits
        np.testing.assert_array_equal(first, second)
        # float16 storage keeps the values to about 3 significant digits
        fresh = (
            encoder([encoder.prepare(synthetic_rows[0]["report"])])
            if modality == "text"
            else encoder(encoder.prepare(synthetic_rows[0])[None])
        )
        np.testing.assert_allclose(first[0], fresh[0].numpy(), rtol=2e-3, atol=2e-3)


def test_identical_reports_are_embedded_once(tmp_path, synthetic_rows, tiny_text_encoder):
    encoder = tiny_text_encoder()
    calls = _counting(encoder)
    extract_embeddings(encoder, synthetic_rows, "text", tmp_path, progress=False)
    distinct = len({encoder.prepare(r["report"]) for r in synthetic_rows})
    assert calls["items"] == distinct < len(synthetic_rows)


@pytest.mark.parametrize("change", [{"max_length": 8}, {"pooling": "cls"}, {"report_sections": ["impression"]}])
def test_text_settings_invalidate_the_cache(tmp_path, synthetic_rows, tiny_text_encoder, change):
    extract_embeddings(tiny_text_encoder(), synthetic_rows, "text", tmp_path, progress=False)
    changed = tiny_text_encoder(**change)
    calls = _counting(changed)
    extract_embeddings(changed, synthetic_rows, "text", tmp_path, progress=False)
    assert calls["items"] > 0


def test_other_weights_invalidate_the_cache(tmp_path, synthetic_rows, tiny_image_encoder):
    extract_embeddings(tiny_image_encoder(), synthetic_rows[:8], "image", tmp_path, progress=False)
    other = tiny_image_encoder()
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    calls = _counting(other)
    extract_embeddings(other, synthetic_rows[:8], "image", tmp_path, progress=False)
    assert calls["items"] == 8


def test_a_changed_file_recomputes_that_file_alone(tmp_path, synthetic_rows, tiny_image_encoder):
    rows = [dict(r) for r in synthetic_rows[:6]]
    for i, row in enumerate(rows):  # private copies of the images, so the session fixture stays intact
        copy = tmp_path / f"img{i}.png"
        shutil.copy(row["image"], copy)
        row["image"] = str(copy)
    encoder = tiny_image_encoder()
    before, _ = extract_embeddings(encoder, rows, "image", tmp_path / "cache", progress=False)
    shutil.copy(synthetic_rows[10]["image"], rows[2]["image"])  # new content under the same name
    calls = _counting(encoder)
    after, _ = extract_embeddings(encoder, rows, "image", tmp_path / "cache", progress=False)
    assert calls["items"] == 1
    assert not np.allclose(before[2], after[2])
    np.testing.assert_array_equal(np.delete(before, 2, 0), np.delete(after, 2, 0))


def test_interrupted_extraction_resumes_without_recomputing(tmp_path, synthetic_rows, tiny_text_encoder):
    rows = synthetic_rows
    encoder = tiny_text_encoder(max_length=16)
    forward, batches = encoder.forward, {"n": 0}

    def dies_on_third_batch(batch):
        batches["n"] += 1
        if batches["n"] == 3:
            raise KeyboardInterrupt
        return forward(batch)

    encoder.forward = dies_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(encoder, rows, "text", tmp_path, batch_size=4, progress=False)
    space = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(list(space.glob("shard_*.keys.json"))) == 2  # two committed shards
    assert not list(space.glob(".*tmp"))  # nothing half-written
    encoder.forward = forward
    calls = _counting(encoder)
    _, kept = extract_embeddings(encoder, rows, "text", tmp_path, batch_size=4, progress=False)
    distinct = len({encoder.prepare(r["report"]) for r in rows})
    assert calls["items"] == distinct - 8 and len(kept) == len(rows)


def test_empty_report_and_missing_image_are_named(
    tmp_path, synthetic_rows, tiny_image_encoder, tiny_text_encoder, caplog
):
    rows = [dict(r) for r in synthetic_rows[:4]]
    rows[1]["report"] = "   "
    rows[2]["image"] = str(tmp_path / "gone.png")
    with pytest.raises(BadRowError, match=r"empty report \(row 2 of .*manifest.csv, field 'report'\)"):
        extract_embeddings(tiny_text_encoder(), rows, "text", tmp_path, progress=False)
    with pytest.raises(BadRowError, match=r"gone.png \(row 3 of .*field 'image'\)"):
        extract_embeddings(tiny_image_encoder(), rows, "image", tmp_path, progress=False)
    with caplog.at_level(logging.WARNING):
        _, kept = extract_embeddings(tiny_text_encoder(), rows, "text", tmp_path, skip_bad_rows=True, progress=False)
    assert kept == [0, 2, 3]
    assert any("skipped 1 bad row(s) of 4" in r.getMessage() for r in caplog.records)


def test_nan_embedding_is_named_and_never_cached(tmp_path, synthetic_rows, tiny_image_encoder):
    encoder = tiny_image_encoder()
    forward = encoder.forward

    def nan_for_second(batch):
        out = forward(batch)
        out[1] = float("nan")
        return out

    encoder.forward = nan_for_second
    with pytest.raises(BadRowError, match=r"NaN/inf for row 2 of .*field 'image'"):
        extract_embeddings(encoder, synthetic_rows[:4], "image", tmp_path, progress=False)
    encoder.forward = forward
    calls = _counting(encoder)
    extract_embeddings(encoder, synthetic_rows[:4], "image", tmp_path, progress=False)
    assert calls["items"] == 4  # the failed batch left nothing behind


def test_batched_read_returns_the_asked_rows_in_the_asked_order(tmp_path):
    from common.data.embedding_cache import EmbeddingCache
    from common.methods.projection.cached_dataset import CachedEmbeddingDataset, batch_collate

    cache = EmbeddingCache(tmp_path, {"test": "batched read"})
    rows = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)  # row i holds 6i..6i+5: exact in float16
    keys = [f"k{i}" for i in range(40)]
    for start in (0, 7, 23):  # three shards of different sizes
        stop = {0: 7, 7: 23, 23: 40}[start]
        cache.add(keys[start:stop], rows[start:stop])
    asked = [39, 0, 8, 8, 22, 7, 31, 3, 23, 6]  # shuffled, across every shard, one repeat
    out = cache.get([keys[i] for i in asked])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, rows[asked])
    np.testing.assert_array_equal(cache.get([keys[i] for i in asked], dtype=None), rows[asked].astype(np.float16))
    with pytest.raises(KeyError, match="not in cache space"):
        cache.read(np.array([(2 << 32) | 17]))  # shard 2 holds 17 rows: 0..16

    dataset = CachedEmbeddingDataset(cache, cache.locate(keys), cache, cache.locate(keys[::-1]), np.arange(40))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=16, shuffle=True, collate_fn=batch_collate, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for batch in loader:
        labels = batch["label"].numpy()
        np.testing.assert_array_equal(batch["image_embedding"].numpy(), rows[labels])
        np.testing.assert_array_equal(batch["text_embedding"].numpy(), rows[39 - labels])
        seen.extend(labels.tolist())
    assert sorted(seen) == list(range(40)) and seen != list(range(40))

    cache.compact()  # three shards -> one: the same rows under the same keys, on disk and after re-opening
    assert len(list(cache.root.glob("shard_*.npy"))) == len(list(cache.root.glob("shard_*.keys.json"))) == 1
    for reader in (cache, EmbeddingCache(tmp_path, {"test": "batched read"})):
        np.testing.assert_array_equal(reader.get([keys[i] for i in asked]), rows[asked])
        np.testing.assert_array_equal(reader.get(keys), rows)


def test_extraction_leaves_one_shard(tmp_path, synthetic_rows, tiny_text_encoder):
    encoder = tiny_text_encoder(max_length=16)
    first, _ = extract_embeddings(encoder, synthetic_rows, "text", tmp_path, batch_size=4, progress=False)
    space = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(list(space.glob("shard_*.npy"))) == 1  # committed per batch of 4, then compacted
    more = [dict(r, report=r["report"] + " new finding.") for r in synthetic_rows[:5]]
    extract_embeddings(encoder, more, "text", tmp_path, batch_size=4, progress=False)
    assert len(list(space.glob("shard_*.npy"))) == 1
    again, _ = extract_embeddings(encoder, synthetic_rows, "text", tmp_path, batch_size=4, progress=False)
    np.testing.assert_array_equal(first, again)
