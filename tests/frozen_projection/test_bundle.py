"""The bundle's configs run end to end from the repository root with MONAI's own runner, on CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle
from safetensors import safe_open


def _bundle_run(root: Path, *configs: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return run_bundle("frozen_projection", (*configs, "demo"), root, *extra)


@pytest.mark.slow
def test_train_evaluate_inference_end_to_end(tmp_path):
    _bundle_run(tmp_path, "train", extra=("--num_epochs", "3"))
    best = tmp_path / "models" / "model.safetensors"
    with safe_open(str(best), framework="pt") as handle:
        assert set(handle.keys()) <= {
            k for k in handle.keys() if k.startswith(("image_head", "text_head", "logit_scale"))
        }
        record = handle.metadata()
    assert "weights_sha256" in record["image_encoder"] and record["score_name"] == "val_score"
    assert len(record["base_model_fingerprint"]) == 64
    assert any((tmp_path / "logs").iterdir()), "TensorBoard events written"

    result = _bundle_run(tmp_path, "train", "evaluate")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["classification"]) == {
        f"{f}/{m}" for f in ("raw", "pca", "projected") for m in ("image", "image+text")
    }
    assert {"image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10", "text_to_image_R@10"} <= set(
        metrics["retrieval"]
    )
    assert (tmp_path / "eval" / "downstream.png").stat().st_size > 1000
    assert "projected/image+text" in result.stdout  # the summary table is printed

    _bundle_run(tmp_path, "inference")
    listing = json.loads((tmp_path / "eval" / "inference" / "projections.json").read_text())
    assert listing["tensors"]["image_projection"][0] == len(listing["ids"]) > 0


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_processes_on_cpu(tmp_path):
    result = run_bundle(
        "frozen_projection", ("train", "multi_gpu_train", "demo"), tmp_path, "--num_epochs", "2", launcher=TORCHRUN_2
    )
    assert (tmp_path / "models" / "model.safetensors").is_file()
    assert (tmp_path / "models" / "model_final.safetensors").is_file()
    # rank 0 logs; the validation metric is gathered, so both ranks agree on every epoch's value
    assert result.stdout.count("Epoch[2] Metrics -- val_score") >= 1
