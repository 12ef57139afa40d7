"""report_gen inference is reproducible across processes and generates what evaluate generated on the same images."""

from __future__ import annotations

import json

import pytest
from bundle_runner import run_bundle

DEMO = ("--demo_num_samples", "60", "--num_epochs", "1")


def _generated(path) -> dict[str, str]:
    return {r["id"]: r["generated"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_inference_twice_equals_evaluate(tmp_path):
    run_bundle("report_gen", ["train", "demo"], tmp_path, *DEMO)
    run_bundle("report_gen", ["train", "train_stage2", "demo"], tmp_path, *DEMO)
    run_bundle("report_gen", ["train", "evaluate", "demo"], tmp_path, *DEMO)
    runs = []
    for attempt in ("first", "second"):
        run_bundle("report_gen", ["inference", "demo"], tmp_path, *DEMO, "--inference_split", "test",
                   "--output_prefix", f"inference_{attempt}")  # fmt: skip
        runs.append(_generated(tmp_path / "eval" / f"inference_{attempt}.jsonl"))
    assert runs[0] == runs[1] and len(runs[0]) > 0  # identical across processes
    assert runs[0] == _generated(tmp_path / "eval" / "test_generated_stage2.jsonl")
