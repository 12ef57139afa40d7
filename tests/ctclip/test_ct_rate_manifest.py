"""CT-RATE manifest building, and the 18 label names against the real CT-RATE label table."""

from __future__ import annotations

import csv
import json

import pytest

from common.data.ct_rate_manifest import build_ct_rate_manifest, ct_rate_relative_path
from common.data.manifest import load_manifest
from common.metrics.zero_shot import CT_RATE_PATHOLOGIES


def test_pathology_names_equal_the_ct_rate_label_columns(shared_data_dir, repo_root):
    with (shared_data_dir / "reports" / "ct_rate" / "text_classifier_val.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header[2:]) == CT_RATE_PATHOLOGIES
    train = json.loads((repo_root / "bundles" / "ctclip_lora" / "configs" / "train.json").read_text())
    assert tuple(train["class_names"]) == CT_RATE_PATHOLOGIES


def _tables(tmp_path, volumes):
    with (tmp_path / "reports.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        for i, name in enumerate(volumes):
            writer.writerow([name, "Not given." if i == 1 else f"Findings of {name}.", "x"])
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", *CT_RATE_PATHOLOGIES])
        for i, name in enumerate(volumes):
            writer.writerow([name, *[(i + k) % 2 for k in range(18)]])


def test_manifest_joins_reports_labels_and_paths(tmp_path):
    volumes = [f"valid_{p}_{s}_{r}.nii.gz" for p in range(1, 9) for s in "ab" for r in (1, 2)]
    _tables(tmp_path, volumes)
    for name in volumes:
        path = tmp_path / ct_rate_relative_path(name, "dataset/valid_fixed")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    out = build_ct_rate_manifest(
        tmp_path, tmp_path / "reports.csv", tmp_path / "labels.csv", tmp_path / "m.csv", val_fraction=0.3
    )
    rows = load_manifest(out, tmp_path, label_columns=list(CT_RATE_PATHOLOGIES), check_images=False)  # empty files
    assert len(rows) == 16  # one reconstruction per scan
    assert rows[0]["image"].endswith("dataset/valid_fixed/valid_1/valid_1_a/valid_1_a_1.nii.gz")
    assert {r["split"] for r in rows} == {"test", "val"}
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())  # patient-level split
    assert rows[0]["report"] == "Findings of valid_1_a_1.nii.gz."
    assert rows[0]["Medical material"] == 0 and rows[0]["Arterial wall calcification"] == 1


def test_bad_tables_are_named(tmp_path):
    _tables(tmp_path, ["valid_1_a_1.nii.gz"])
    with pytest.raises(FileNotFoundError, match="valid_1_a_1.nii.gz"):
        build_ct_rate_manifest(tmp_path, tmp_path / "reports.csv", tmp_path / "labels.csv", tmp_path / "m.csv")
    with pytest.raises(ValueError, match="Hiatal hernia"):
        (tmp_path / "labels.csv").write_text("VolumeName,Cardiomegaly\nvalid_1_a_1.nii.gz,1\n")
        build_ct_rate_manifest(
            tmp_path, tmp_path / "reports.csv", tmp_path / "labels.csv", tmp_path / "m.csv", check_files=False
        )
    with pytest.raises(ValueError, match="VolumeName"):
        ct_rate_relative_path("scan.nii.gz", "x")
