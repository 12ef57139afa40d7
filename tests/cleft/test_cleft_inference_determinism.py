"""cleft_cxr inference.json runs alone (and merged after train.json) and scores the test split as evaluate does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_runner import run_bundle

from common.data.manifest import load_manifest
from common.metrics.classification import classification_metrics

DEMO = ("--demo_num_samples", "80", "--num_epochs", "2")


@pytest.mark.slow
def test_inference_twice_equals_evaluate(tmp_path):
    run_bundle("cleft_cxr", ["train", "demo"], tmp_path, *DEMO)
    run_bundle("cleft_cxr", ["train", "evaluate", "demo"], tmp_path, *DEMO, "--run_linear_probe", "false")
    evaluated = json.loads((tmp_path / "eval" / "zero_shot_metrics.json").read_text())
    class_names = evaluated["class_names"]
    rows = [r for r in load_manifest(tmp_path / "demo_data" / "manifest.csv", label_columns=class_names)
            if r["split"] == "test"]  # fmt: skip
    runs = []
    # inference.json alone (as MONAI Label loads it, reading models/model.pt), then merged after train.json
    for attempt, configs in (("standalone", ["inference", "demo"]), ("merged", ["train", "inference", "demo"])):
        out = tmp_path / "eval" / f"predictions_{attempt}.json"
        run_bundle("cleft_cxr", configs, tmp_path, *DEMO,
                   "--input_files", json.dumps([r["image"] for r in rows]), "--output_path", str(out))  # fmt: skip
        runs.append(json.loads(out.read_text())["predictions"])
    assert runs[0] == runs[1]  # identical across processes and forms
    assert [p["image"] for p in runs[0]] == [r["image"] for r in rows]
    probs = np.array([[p["probabilities"][c] for c in class_names] for p in runs[0]])
    labels = np.array([int(np.argmax([r[c] for c in class_names])) for r in rows])
    ours = classification_metrics(labels, probs, class_names=class_names)
    assert evaluated["num_samples"] == len(rows)
    for key in ("accuracy", "auroc", "f1"):
        assert ours[key] == pytest.approx(evaluated[key], abs=1e-6), key
