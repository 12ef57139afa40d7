"""A run that could not score validation fails, and evaluate refuses a checkpoint trained on other data.

The scenario of issue 11: a first real run in a bundle folder where the demo ran before. The demo's
``models/model.safetensors`` is still there; a run of other data in the same ``ckpt_dir`` is refused (resume: another
run), and in its own ``ckpt_dir`` a run whose validation is NaN on every epoch must say so and fail (leaving the demo's
file as it was), and the next evaluate must refuse that checkpoint, whose training data differ from
the manifest given now, unless ``--allow_other_run_weights true``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import ENV, REPO_ROOT, run_bundle
from safetensors import safe_open


def _run_failing(root: Path, configs: tuple[str, ...], *overrides: str) -> str:
    files = ",".join(f"'bundles/frozen_projection/configs/{c}.json'" for c in configs)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"[{files}]", "--bundle_root", str(root)]
    result = subprocess.run(
        [*args, *overrides], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode != 0, f"expected a failure:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout + result.stderr


def _one_class_validation(manifest: Path, out: Path) -> Path:
    """A copy of ``manifest`` whose val rows all have the first val row's label (a pair AUROC is then NaN) and
    with one train row fewer (other training data than the demo's)."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    val_label = next(r["label"] for r in rows if r["split"] == "val")
    for row in rows:
        if row["split"] == "val":
            row["label"] = val_label
    first_train = next(i for i, r in enumerate(rows) if r["split"] == "train")
    rows.pop(first_train)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.mark.slow
def test_nan_validation_fails_and_evaluate_refuses_the_demo_checkpoint(tmp_path):
    small = ("--demo_num_samples", "96", "--num_epochs", "1")
    run_bundle("frozen_projection", ("train", "demo"), tmp_path, *small)
    best = tmp_path / "models" / "model.safetensors"
    with safe_open(str(best), framework="pt") as handle:
        record = handle.metadata()
    assert record["run_id"] and len(record["training_data_sha256"]) == 64 and record["epoch"] == "1"
    demo_bytes = best.read_bytes()

    manifest = _one_class_validation(tmp_path / "demo_data" / "manifest.csv", tmp_path / "real.csv")
    real = ("--manifest", str(manifest), "--num_epochs", "2")
    output = _run_failing(tmp_path, ("train", "demo"), *real)  # the same ckpt_dir: resume refuses another run
    assert "holds another run of stage 'model'" in output.splitlines()[-1] and "--ckpt_dir" in output
    assert best.read_bytes() == demo_bytes
    output = _run_failing(tmp_path, ("train", "demo"), *real, "--ckpt_dir", str(tmp_path / "real_models"))
    assert "validation never produced a finite val_score (2 validation(s): nan, nan)" in output
    assert not (tmp_path / "real_models" / "model.safetensors").exists()  # a NaN score is never "best"
    assert best.read_bytes() == demo_bytes  # the demo's best checkpoint is left as it was, not replaced

    output = _run_failing(tmp_path, ("train", "evaluate", "demo"), *real)
    assert f"checkpoint {best} (run {record['run_id']}) was trained from" in output
    assert "another run's weights" in output and "--allow_other_run_weights true" in output
    assert not (tmp_path / "eval" / "metrics.json").exists()

    result = run_bundle(
        "frozen_projection", ("train", "evaluate", "demo"), tmp_path, *real, "--allow_other_run_weights", "true"
    )
    assert f"run {record['run_id']}, epoch 1, val_score=" in result.stdout + result.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["classification"]
