"""The bundle's configs run end to end from the repository root with MONAI's own runner, on CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle
from ddp_parity import split_size, tensorboard_scalars
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
def test_two_ranks_score_an_odd_validation_split_as_one_process_does(tmp_path):
    """``multi_gpu_train.json`` on 2 gloo ranks, validating an odd split (9 rows: 5 on rank 0, 4 on rank 1).

    An honest comparison needs the same weights in both runs: with learning rate 0 the heads keep their seeded
    initialisation (DDP broadcasts rank 0's, the one-process run's), so every epoch's validation sees the same
    model in both runs and only the sharding differs. The gathered ``val_score`` must equal the one-process one.
    """
    overrides = ("--demo_num_samples", "39", "--num_epochs", "2", "--learning_rate", "0")
    one, two = tmp_path / "one_process", tmp_path / "two_ranks"
    run_bundle("frozen_projection", ("train", "demo"), one, *overrides)
    ddp = ("train", "multi_gpu_train", "demo")
    run_bundle("frozen_projection", ddp, two, *overrides, "--dist_backend", "gloo", launcher=TORCHRUN_2)
    assert split_size(two / "demo_data" / "manifest.csv", "val") == 9  # odd: the shards are uneven
    assert (two / "models" / "model.safetensors").is_file()
    assert (two / "models" / "model_final.safetensors").is_file()
    single, ranks = tensorboard_scalars(one / "logs")["val_score"], tensorboard_scalars(two / "logs")["val_score"]
    assert sorted(ranks) == [1, 2]  # rank 0 logged each epoch once
    assert ranks == pytest.approx(single, rel=1e-6)
