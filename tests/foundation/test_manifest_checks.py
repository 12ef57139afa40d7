"""Manifest conditions that used to pass silently: duplicate rows, no patient_id column, an empty train split."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from common.data.manifest import ManifestError, load_manifest, rows_of_split, write_manifest


@pytest.fixture
def folder(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")  # a real PNG: images are read up front
    Image.new("L", (4, 4)).save(tmp_path / "b.png")  # a real PNG: images are read up front
    return tmp_path


def test_duplicate_rows_are_a_warning_with_the_count(folder, caplog):
    row = {"image": "a.png", "label": 1, "patient_id": "p1", "split": "train"}
    other = {"image": "b.png", "label": 0, "patient_id": "p2", "split": "train"}
    path = write_manifest([row, other, row, row], folder / "m.csv")
    with caplog.at_level(logging.WARNING):
        rows = load_manifest(path, label_columns=["label"])
    assert len(rows) == 4  # kept: a warning, not a silent change of the data
    assert "2 row(s) repeat an earlier row exactly (row 3 = row 1, row 4 = row 1)" in caplog.text


def test_missing_patient_id_column_says_the_leak_check_is_off_once(folder, caplog):
    rows = [{"image": "a.png", "split": "train"}, {"image": "b.png", "split": "val"}]
    path = write_manifest(rows, folder / "m.csv")
    with caplog.at_level(logging.WARNING):
        load_manifest(path)
    assert caplog.text.count("no 'patient_id' column: the check that no patient is in two splits is off") == 1
    caplog.clear()
    with_ids = write_manifest([{**r, "patient_id": f"p{i}"} for i, r in enumerate(rows)], folder / "ids.csv")
    with caplog.at_level(logging.WARNING):
        load_manifest(with_ids)
    assert "patient_id" not in caplog.text


def test_empty_train_split_is_a_named_error(folder):
    path = write_manifest([{"image": "a.png", "split": "val"}, {"image": "b.png", "split": ""}], folder / "m.csv")
    rows = load_manifest(path)
    with pytest.raises(ManifestError, match=r"m.csv: split 'train' has 0 row\(s\).*'val': 1.*without a split: 1"):
        rows_of_split(rows, "train")
    assert [r["row"] for r in rows_of_split(rows, "val")] == [1]


@pytest.mark.parametrize(
    "bundle, key", [("cleft_cxr", "train#dataset#data"), ("frozen_projection", "train#dataset#data")]
)
def test_bundles_refuse_an_empty_train_split(bundle, key):
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "bundles" / bundle / "configs" / "train.json"))
    source = "manifest_rows" if bundle == "cleft_cxr" else "embedding_table"
    parser[source] = [{"image": "a.png", "split": "val", "row": 1, "manifest": "m.csv"}]
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content(key)
    assert "split 'train' has 0 row(s)" in str(info.value.__cause__)
