"""Collect the headline ratios of the benchmarks' own results into ``benchmarks/results/summary.json``.

One flat object: each ratio is copied from the results file of the benchmark that measured it in one run
(named in ``note``); a ratio whose benchmark has not been run is absent, never estimated.

    python benchmarks/summary.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from common.data.atomic_io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
# summary key -> (results file, path of keys inside it)
SOURCES = {
    "frozen_cache_training_read_vs_copy": ("frozen_projection.json", ["frozen_cache_training_read_vs_copy"]),
    # all rows (256, 288, 1024, 4096 and one chunk) in one run, chunked loss, glibc mmap threshold fixed
    "gradient_cache_memory_4096_vs_chunk": ("cleft_gradient_cache.json", ["gradient_cache_memory_4096_vs_chunk"]),
    "generation_batched_speedup": ("report_gen_benchmark.json", ["generation", "generation_batched_speedup"]),
    "kv_cache_speedup_128_tokens": ("report_gen_benchmark.json", ["generation", "kv_cache_speedup_128_tokens"]),
    "ct_zero_shot_speedup_vs_official": ("ctclip_zero_shot_speed.json", ["speedup"]),
    "ct_cache_read_vs_plain_read": ("ctclip_volume_cache.json", ["ct_cache_read_vs_plain_read"]),
    "ct_zero_shot_cost_ratio_1000_vs_18_classes": (
        "ctclip_zero_shot_scaling.json",
        ["ct_zero_shot_cost_ratio_1000_vs_18_classes"],
    ),
}
NOT_MEASURED: list[str] = []


def summarise(results: Path, device: str, extra: str = "") -> dict:
    summary: dict = {}
    used = []
    for key, (name, path) in SOURCES.items():
        try:
            value = json.loads((results / name).read_text())
            for part in path:
                value = value[part]
        except (FileNotFoundError, KeyError):
            continue
        summary[key] = float(value)
        used.append(f"{key} from {name}")
    summary["device"] = device
    summary["measured"] = datetime.date.today().isoformat()
    absent = [k for k in [*SOURCES, *NOT_MEASURED] if k not in summary]
    summary["note"] = (
        "; ".join(used)
        + "."
        + (f" Absent (not measured by any benchmark yet): {', '.join(absent)}." if absent else "")
        + (f" {extra}" if extra else "")
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu (x86_64, 2 cores shared with other jobs)")
    parser.add_argument("--extra", default="", help="a sentence appended to the note (e.g. which were not re-run)")
    args = parser.parse_args()
    summary = summarise(args.results, args.device, args.extra)
    write_text_atomic(json.dumps(summary, indent=2) + "\n", args.results / "summary.json")
    print(json.dumps(summary, indent=2))
