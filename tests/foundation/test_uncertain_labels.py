"""A -1 (uncertain) in a binary label column is refused unless uncertain_label_policy says what it becomes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from PIL import Image

from common.data.manifest import ManifestError, load_manifest, write_manifest

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture
def manifest(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")  # a real PNG: images are read up front
    rows = [
        {"image": "a.png", "report": "r", "Effusion": 1, "Edema": 0, "split": "train"},
        {"image": "a.png", "report": "r", "Effusion": -1, "Edema": 1, "split": "train"},
        {"image": "a.png", "report": "r", "Effusion": 0, "Edema": 0, "split": "val"},
    ]
    return write_manifest(rows, tmp_path / "m.csv")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_uncertain_label_is_refused_by_default(manifest):
    before = _digest(manifest)
    with pytest.raises(ManifestError, match=r"m.csv: row 2: field 'Effusion': label value -1 .*uncertain_label_policy"):
        load_manifest(manifest, label_columns=["Effusion", "Edema"], binary_labels=True)
    assert _digest(manifest) == before


@pytest.mark.parametrize("policy, effusion", [("positive", 1), ("negative", 0)])
def test_uncertain_policy_maps_minus_one(manifest, policy, effusion):
    rows = load_manifest(
        manifest, label_columns=["Effusion", "Edema"], binary_labels=True, uncertain_label_policy=policy
    )
    assert [r["Effusion"] for r in rows] == [1, effusion, 0]


def test_ignore_leaves_the_row_out_with_a_warning(manifest, caplog):
    with caplog.at_level(logging.WARNING):
        rows = load_manifest(manifest, label_columns=["Effusion"], binary_labels=True, uncertain_label_policy="ignore")
    assert [r["row"] for r in rows] == [1, 3]
    assert "row 2: field 'Effusion': uncertain label -1" in caplog.text and "left out 1 row(s) of 3" in caplog.text


@pytest.mark.parametrize("value", [2, 0.5])
def test_other_values_are_refused_whatever_the_policy(tmp_path, value):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")  # a real PNG: images are read up front
    path = write_manifest([{"image": "a.png", "Effusion": value}], tmp_path / "m.csv")
    with pytest.raises(ManifestError, match=rf"row 1: field 'Effusion': label value {value} is not 0 or 1"):
        load_manifest(path, label_columns=["Effusion"], binary_labels=True, uncertain_label_policy="positive")


@pytest.mark.parametrize("bundle, rows_key", [("ctclip_lora", "validate#rows"), ("cleft_cxr", "manifest_rows")])
def test_bundles_refuse_uncertain_labels(manifest, bundle, rows_key):
    with manifest.open("a") as handle:  # a positive val row: ctclip's val AUROC needs both classes of a label
        handle.write("a.png,r,1,1,val\n")
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update(
        {"dataset_dir": str(manifest.parent), "manifest": str(manifest), "class_names": ["Effusion", "Edema"]}
    )
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's error; the cause is ours
        parser.get_parsed_content(rows_key)
    assert isinstance(info.value.__cause__, ManifestError)
    assert "row 2: field 'Effusion': label value -1" in str(info.value.__cause__)
    parser["uncertain_label_policy"] = "negative"
    parser.parse(reset=True)
    assert {r["Effusion"] for r in parser.get_parsed_content(rows_key)} <= {0, 1}
