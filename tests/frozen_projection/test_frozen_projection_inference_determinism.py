"""frozen_projection inference.json runs alone (and merged after train.json) and projects as evaluate does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bundle_runner import run_bundle
from safetensors.torch import load_file

from common.data.manifest import load_manifest
from common.metrics.embedding_quality import pair_auroc
from common.metrics.retrieval import bidirectional_retrieval

DEMO = ("--demo_num_samples", "120")


@pytest.mark.slow
def test_inference_twice_equals_evaluate(tmp_path):
    run_bundle("frozen_projection", ["train", "demo"], tmp_path, *DEMO, "--num_epochs", "2")
    run_bundle("frozen_projection", ["train", "evaluate", "demo"], tmp_path, *DEMO)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    names = evaluated["class_names"]
    rows = load_manifest(tmp_path / "demo_data" / "manifest.csv", label_columns=["label"],
                         class_names={"label": names}, require_report=True)  # fmt: skip
    runs = []
    # inference.json alone (reading models/model.pt), then merged after train.json
    for attempt, configs in (("standalone", ["inference", "demo"]), ("merged", ["train", "inference", "demo"])):
        out = tmp_path / "eval" / f"inference_{attempt}"
        run_bundle("frozen_projection", configs, tmp_path, *DEMO, "--output_dir", str(out))
        ids = json.loads((out / "projections.json").read_text())["ids"]
        runs.append((ids, load_file(str(out / "projections.safetensors"))))
    assert runs[0][0] == runs[1][0]
    for key in ("image_projection", "text_projection"):
        torch.testing.assert_close(runs[0][1][key], runs[1][1][key], rtol=0, atol=0)  # across processes and forms
    ids, projections = runs[0]
    by_id = {str(r.get("id") or Path(r["image"]).stem): r for r in rows}
    test = [i for i, row_id in enumerate(ids) if by_id[row_id]["split"] == "test"]
    assert len(test) == evaluated["num_test"]
    labels = torch.tensor([int(by_id[ids[i]]["label"]) for i in test])
    image, text = projections["image_projection"][test], projections["text_projection"][test]
    assert pair_auroc(image, labels) == pytest.approx(evaluated["pair_auroc"]["projected/image"], abs=1e-6)
    assert pair_auroc(text, labels) == pytest.approx(evaluated["pair_auroc"]["projected/text"], abs=1e-6)
    retrieval = bidirectional_retrieval(F.normalize(image, dim=-1), F.normalize(text, dim=-1), (1, 5, 10))
    assert retrieval == pytest.approx(evaluated["retrieval"], abs=1e-6)
