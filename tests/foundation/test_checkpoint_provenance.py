"""The record of the run and data a checkpoint was trained from, and the check at load time."""

from __future__ import annotations

import logging

import pytest
import torch

from common.engines.checkpoint import save_safetensors
from common.engines.checkpoint_provenance import checked_checkpoint, training_data_record
from common.engines.save_handler import TrainedWeightsSaveHandler


def _rows(root: str, reports: list[str], split: str = "train") -> list[dict]:
    return [
        {
            "image": f"{root}/images/{i}.png",
            "report": r,
            "label": i % 2,
            "split": split,
            "patient_id": str(i),
            "row": i + 1,
            "manifest": f"{root}/manifest.csv",
        }
        for i, r in enumerate(reports)
    ]


def _checkpoint(tmp_path, rows) -> tuple[str, dict]:
    handler = TrainedWeightsSaveHandler(tmp_path, base_fingerprint="0" * 64, training_rows=rows)
    handler.context.update(epoch=3, score_sign=1.0)
    handler({"w": torch.zeros(2)}, "model.safetensors", {"score_name": "val_auroc", "priority": 0.75})
    return str(tmp_path / "model.safetensors"), handler.record


def test_the_record_names_run_epoch_metric_and_data_and_loading_logs_it(tmp_path, caplog):
    rows = _rows("/data/a", ["r0", "r1", "r2"])
    path, record = _checkpoint(tmp_path, rows)
    with caplog.at_level(logging.INFO, logger="common.engines.checkpoint_provenance"):
        assert checked_checkpoint(path, rows) == path
    line = caplog.records[0].getMessage()
    assert f"run {record['run_id']}, epoch 3, val_auroc=0.75" in line
    assert "trained from /data/a/manifest.csv (3 rows" in line


def test_other_training_data_are_refused_unless_allowed(tmp_path, caplog):
    path, record = _checkpoint(tmp_path, _rows("/data/demo", ["r0", "r1", "r2"]))
    real = _rows("/data/real", ["a real report", "r1", "r2"])
    with pytest.raises(ValueError, match=r"another run's weights.*--allow_other_run_weights true"):
        checked_checkpoint(path, real)
    with caplog.at_level(logging.WARNING):
        assert checked_checkpoint(path, real, allow_other_run_weights=True) == path
    assert "allow_other_run_weights is set" in caplog.text


def test_moving_the_data_set_or_reordering_rows_keeps_the_fingerprint():
    here, moved = _rows("/data/a", ["x", "y", "z"]), _rows("/mnt/copy/a", ["x", "y", "z"])
    assert (
        training_data_record(here)["training_data_sha256"] == training_data_record(moved[::-1])["training_data_sha256"]
    )
    changed = _rows("/data/a", ["x", "y", "changed"])
    assert training_data_record(here)["training_data_sha256"] != training_data_record(changed)["training_data_sha256"]


def test_a_test_only_manifest_or_no_rows_is_not_compared(tmp_path):
    path, _ = _checkpoint(tmp_path, _rows("/data/a", ["x"]))
    assert checked_checkpoint(path, []) == path  # evaluating on a test-only manifest is legitimate
    assert checked_checkpoint(path) == path  # inference: nothing to compare
    assert checked_checkpoint("", _rows("/data/a", ["x"])) == ""  # no checkpoint: the base model is evaluated


def test_a_checkpoint_without_a_data_record_is_refused(tmp_path):
    path = save_safetensors({"w": torch.zeros(1)}, tmp_path / "old.safetensors", {"epoch": 1})
    with pytest.raises(ValueError, match="has no record of the data it was trained from"):
        checked_checkpoint(path, _rows("/data/a", ["x"]))
