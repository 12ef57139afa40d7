"""benchmarks/gpu_suite.sh runs every benchmark end to end; with --tiny it must pass on CPU too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_runs_tiny_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny", "--bf16", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    names = [
        "frozen_projection",
        "report_gen_benchmark",
        "cleft_gradient_cache",
        "cleft_parameters",
        "ctclip_zero_shot_speed",
        "ctclip_lora_memory",
        "ctclip_volume_cache",
        "ctclip_zero_shot_scaling",
    ]
    for name in names:
        assert json.loads((tmp_path / f"{name}.json").read_text()), name
        assert (tmp_path / f"{name}.md").read_text().startswith("#"), name
    generation = json.loads((tmp_path / "report_gen_benchmark.json").read_text())["generation"]
    assert generation["generation_batched_speedup"] > 0 and generation["kv_cache_speedup"] > 0
    # --bf16 reaches the benchmarks of the bundles that offer autocast_dtype (CPU autocast runs bf16 too)
    stages = json.loads((tmp_path / "report_gen_benchmark.json").read_text())["stages"]
    lora = json.loads((tmp_path / "ctclip_lora_memory.json").read_text())["rows"]
    assert {row["autocast_dtype"] for row in stages + lora} == {"bfloat16"}
