"""Manifests: parsing, patient-level splits and named errors for bad rows."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from common.data.manifest import ManifestError, assign_patient_splits, load_manifest, write_manifest


@pytest.fixture
def dataset(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")  # a real PNG: images are read up front
    Image.new("L", (4, 4)).save(tmp_path / "b.png")  # a real PNG: images are read up front
    return tmp_path


def _write(path, rows):
    write_manifest(rows, path)
    return path


def test_csv_rows_resolve_paths_and_parse_labels(dataset):
    manifest = _write(
        dataset / "m.csv",
        [
            {
                "image": "a.png",
                "report": 'Heart "enlarged",\nsecond line',
                "label": "1",
                "patient_id": "p1",
                "split": "train",
            },
            {"image": "b.png", "report": "Clear.", "label": "0", "patient_id": "p2", "split": "test"},
        ],
    )
    rows = load_manifest(manifest, label_columns=["label"], require_report=True)
    assert rows[0]["image"] == str(dataset / "a.png")
    assert rows[0]["report"] == 'Heart "enlarged",\nsecond line'  # quotes and newlines survive the CSV round trip
    assert [r["label"] for r in rows] == [1, 0]
    assert [r["row"] for r in load_manifest(manifest, split="test")] == [2]


def test_jsonl_and_class_names(dataset):
    manifest = dataset / "m.jsonl"
    manifest.write_text(
        "\n".join(json.dumps(r) for r in [{"image": "a.png", "finding": "edema"}, {"image": "b.png", "finding": 0}])
    )
    rows = load_manifest(manifest, label_columns=["finding"], class_names={"finding": ["normal", "edema"]})
    assert [r["finding"] for r in rows] == [1, 0]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "missing.png", "report": "x", "label": "1"}, r"row 1: field 'image': file not found: .*missing.png"),
        ({"image": "a.png", "report": "   ", "label": "1"}, r"row 1: field 'report': empty report"),
        (
            {"image": "a.png", "report": "x", "label": "maybe"},
            r"row 1: field 'label': label value 'maybe' is not a number",
        ),
        ({"image": "a.png", "report": "x", "label": "nan"}, r"row 1: field 'label': label is NaN"),
        ({"image": "a.png", "report": "x", "label": "1", "split": "holdout"}, r"row 1: field 'split': unknown split"),
    ],
)
def test_bad_rows_name_file_row_and_field(dataset, row, message):
    manifest = _write(dataset / "m.csv", [row])
    with pytest.raises(ManifestError, match=message):
        load_manifest(manifest, label_columns=["label"], require_report=True)


def test_unknown_class_name_is_an_error(dataset):
    manifest = _write(dataset / "m.csv", [{"image": "a.png", "finding": "pneumonia"}])
    with pytest.raises(ManifestError, match=r"field 'finding': unknown label value 'pneumonia'"):
        load_manifest(manifest, label_columns=["finding"], class_names={"finding": ["normal", "edema"]})


def test_missing_label_column_is_named(dataset):
    manifest = _write(dataset / "m.csv", [{"image": "a.png"}])
    with pytest.raises(ManifestError, match=r"label column\(s\) \['Edema'\] missing"):
        load_manifest(manifest, label_columns=["Edema"])


def test_skip_bad_rows_warns_per_row_and_counts(dataset, caplog):
    manifest = _write(
        dataset / "m.csv",
        [{"image": "a.png", "report": "ok"}, {"image": "gone.png", "report": "ok"}, {"image": "b.png", "report": ""}],
    )
    with caplog.at_level(logging.WARNING):
        rows = load_manifest(manifest, require_report=True, skip_bad_rows=True)
    assert len(rows) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("skipping bad row" in w for w in warnings) == 2
    assert any("skipped 2 bad row(s) of 3" in w for w in warnings)


def test_patient_in_two_splits_is_a_leak(dataset):
    manifest = _write(
        dataset / "m.csv",
        [
            {"image": "a.png", "patient_id": "p1", "split": "train"},
            {"image": "b.png", "patient_id": "p1", "split": "test"},
        ],
    )
    with pytest.raises(ManifestError, match="patient 'p1' is in both 'train' and 'test'"):
        load_manifest(manifest)


def test_patient_splits_are_stable_and_patient_level():
    rows = [{"patient_id": f"p{i // 3}", "row": i} for i in range(300)]
    first = assign_patient_splits(rows, seed=1)
    again = assign_patient_splits(rows + [{"patient_id": "new", "row": 300}], seed=1)
    assert [r["split"] for r in first] == [r["split"] for r in again[:300]]  # adding rows moves nobody
    by_patient = {}
    for r in first:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: sum(r["split"] == s for r in first) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_missing_manifest_names_both_places_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest not found: m.csv \(nor .*/data/m.csv\); set dataset_dir"):
        load_manifest("m.csv", tmp_path / "data")
