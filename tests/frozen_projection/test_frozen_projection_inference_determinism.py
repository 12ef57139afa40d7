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
    manifest = tmp_path / "demo_data" / "manifest.csv"
    rows = load_manifest(manifest, label_columns=["label"],
                         class_names={"label": names}, require_report=True)  # fmt: skip
    runs = []
    # inference.json alone (reading models/model.pt), then merged after train.json
    for attempt, configs in (("standalone", ["inference", "demo"]), ("merged", ["train", "inference", "demo"])):
        out = tmp_path / "eval" / f"inference_{attempt}"
        # the standalone run also retrieves, for every image, the 3 nearest reports of the demo's manifest
        retrieval = ("--retrieval_manifest", str(manifest), "--retrieval_top_k", "3") if attempt == "standalone" else ()
        run_bundle("frozen_projection", configs, tmp_path, *DEMO, "--output_dir", str(out), *retrieval)
        ids = json.loads((out / "projections.json").read_text())["ids"]
        runs.append((ids, load_file(str(out / "projections.safetensors"))))
    assert runs[0][0] == runs[1][0]
    record = json.loads((tmp_path / "eval" / "inference_standalone" / "retrieval.json").read_text())
    assert_retrieval_ranks_the_projections(record, runs[0][0], runs[0][1])
    assert not (tmp_path / "eval" / "inference_merged" / "retrieval.json").exists()  # no retrieval_manifest
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


def assert_retrieval_ranks_the_projections(record: dict, ids: list[str], projections: dict) -> None:
    """retrieval.json holds, for every image, the 3 reports of the manifest (here: the same rows, in order) whose
    text projections are nearest (cosine) to its image projection."""
    image = F.normalize(projections["image_projection"], dim=-1)
    scores = image @ F.normalize(projections["text_projection"], dim=-1).T  # (N images, N reports)
    assert record["top_k"] == 3 and [r["id"] for r in record["results"]] == ids
    for i, result in enumerate(record["results"]):
        best = torch.sort(scores[i], descending=True).values[:3]
        assert [n["score"] for n in result["neighbours"]] == pytest.approx(best.tolist(), abs=1e-5)
        for neighbour in result["neighbours"]:
            assert neighbour["score"] == pytest.approx(scores[i, ids.index(neighbour["id"])].item(), abs=1e-5)
