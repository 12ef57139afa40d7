"""cleft_cxr with fewer training rows than ``batch_size`` (``drop_last``) refuses to start instead of training nothing.

Before, MONAI's trainer returned from ``run()`` on the empty loader without a word and the run went on to reload
(and export) the ``models/model.safetensors`` an earlier run left, exiting 0.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import ENV, REPO_ROOT


@pytest.mark.slow
def test_fewer_train_rows_than_batch_size_fails_before_training(tmp_path):
    earlier = tmp_path / "models" / "model.safetensors"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's checkpoint")
    files = ",".join(f"'bundles/cleft_cxr/configs/{c}.json'" for c in ("train", "demo"))
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"[{files}]", "--bundle_root", str(tmp_path)]
    overrides = ["--demo_num_samples", "40", "--batch_size", "64", "--num_epochs", "1"]
    result = subprocess.run(
        [*args, *overrides], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0, result.stdout[-2000:]
    with Path(tmp_path / "demo_data" / "manifest.csv").open(newline="") as handle:
        train_rows = sum(1 for row in csv.DictReader(handle) if row["split"] == "train")
    assert 0 < train_rows < 64
    expected = f"the train split has {train_rows} row(s), which makes 0 training batches (minimum: 64 rows)"
    assert expected in result.stderr, result.stderr[-3000:]
    assert f"--batch_size {train_rows}" in result.stderr
    assert earlier.read_bytes() == b"an earlier run's checkpoint"
    assert not (tmp_path / "models" / "model_final.safetensors").exists()
