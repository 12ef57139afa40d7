"""Bad input to the report generator's data path: each error names the file or the manifest row."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import Compose, Resized, ScaleIntensityd
from PIL import Image

from common.data.image_loading import LoadRadiographd
from common.data.manifest import ManifestError, write_manifest
from common.methods.report_gen.data import load_report_rows, make_collators


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(32, 32) * 255).byte().numpy()).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [
        {
            "image": "images/0.png",
            "report": "FINDINGS: The heart is normal. IMPRESSION: No acute disease.",
            "split": "train",
            "patient_id": "a",
        },
        {
            "image": "images/1.png",
            "report": "FINDINGS: There is a XXXX right effusion.",
            "split": "train",
            "patient_id": "b",
        },
        {"image": "images/2.png", "report": "No pneumothorax.", "split": "val", "patient_id": "c"},
    ]
    return tmp_path, rows


def test_rows_are_cleaned_and_given_ids(dataset):
    root, rows = dataset
    loaded = load_report_rows(write_manifest(rows, root / "m.csv"), root, "train")
    assert [r["id"] for r in loaded] == ["0", "1"]
    assert loaded[1]["report"] == "there is a right effusion."
    assert loaded[1]["image"] == str(root / "images" / "1.png")


def test_missing_image_names_the_row_and_file(dataset):
    root, rows = dataset
    rows[1]["image"] = "images/missing.png"
    with pytest.raises(ValueError, match=r"row 2.*missing\.png"):
        load_report_rows(write_manifest(rows, root / "m.csv"), root)
    kept = load_report_rows(write_manifest(rows, root / "m.csv"), root, skip_bad_rows=True)
    assert [r["id"] for r in kept] == ["0", "2"]


@pytest.mark.parametrize("report", ["", "   ", "XXXX XXXX."])
def test_empty_or_placeholder_only_report_names_the_row(dataset, report):
    root, rows = dataset
    rows[2]["report"] = report
    with pytest.raises(ManifestError, match="row 3"):
        load_report_rows(write_manifest(rows, root / "m.csv"), root)


def test_corrupt_image_is_found_up_front_naming_the_file_and_row(dataset):
    root, rows = dataset
    rows[0]["image"] = "images/corrupt.png"
    manifest = write_manifest(rows, root / "m.csv")
    with pytest.raises(ManifestError, match=r"row 1: field 'image': .*corrupt\.png is a damaged image file"):
        load_report_rows(manifest, root)
    kept = load_report_rows(manifest, root, skip_bad_rows=True)
    assert [r["id"] for r in kept] == ["1", "2"]


def test_corrupt_image_read_by_the_loader_names_the_file_and_row(dataset):
    root, rows = dataset
    rows[0]["image"] = "images/corrupt.png"
    loaded = load_report_rows(write_manifest(rows, root / "m.csv"), root, check_files=False)
    loaded[0]["image"] = str(root / "images" / "corrupt.png")
    load = Compose([LoadRadiographd("image"), Resized("image", (32, 32)), ScaleIntensityd("image")])
    with pytest.raises(Exception) as info:  # MONAI's Compose wraps the loader's ValueError in a RuntimeError
        load(loaded[0])
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    message = " | ".join(chain)
    assert "corrupt.png" in message and "row 1" in message and "could not read image" in message
    assert "damaged image file" in message  # the file's fault, not MONAI's "install the reader libraries"


def test_long_report_is_truncated_and_counted(dataset, word_tokenizer, caplog):
    root, rows = dataset
    rows[0]["report"] = "FINDINGS: " + "the heart is normal. " * 30
    loaded = load_report_rows(write_manifest(rows, root / "m.csv"), root, "train")
    train_collate, _ = make_collators(word_tokenizer, "findings of <image> chest x-ray :", 4, text_max_length=16)
    items = [{**r, "image": torch.zeros(1, 8, 8)} for r in loaded]
    with caplog.at_level("WARNING"):
        batch = train_collate(items)
    assert train_collate.num_truncated == 1
    assert "'0' has 150 tokens, truncated to text_max_length=16" in caplog.text
    assert batch["report"][0] == loaded[0]["report"]  # the full report stays the reference
