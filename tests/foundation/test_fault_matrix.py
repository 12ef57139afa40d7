"""The fault matrix for bad input: each case, through each bundle's own config wiring, stops with a message naming
the file, row and field (or is skipped with ``skip_bad_rows``), and nothing on disk changes.

Each case parses the bundle's ``train.json`` with MONAI's ``ConfigParser`` and evaluates only the expression that
reads the manifest (the bundle's wiring of :func:`common.data.manifest.load_manifest`), so no model is built. The
message asserted is :func:`common.errors.root_cause` of what MONAI raises, which is exactly the last line a failed
``python -m monai.bundle run`` prints (``tests/foundation/test_root_cause_line.py`` checks that end to end).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data.image_loading import LoadVolume
from common.data.manifest import write_manifest
from common.errors import root_cause
from common.weights.cleft_checkpoint import read_official_state_dict
from common.weights.ctclip_checkpoint import read_state_dict

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
RADIOGRAPH_BUNDLES = ("cleft_cxr", "frozen_projection", "report_gen")
ALL_BUNDLES = (*RADIOGRAPH_BUNDLES, "ctclip_lora")
REPORT_BUNDLES = ("frozen_projection", "report_gen", "ctclip_lora")  # require a report (ctclip: objective 'clip')
ROWS_KEY = {
    "cleft_cxr": "manifest_rows",
    "frozen_projection": "manifest_rows",
    "report_gen": "train#rows",
    "ctclip_lora": "train#rows",
}


def write_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


def write_nifti(path: Path, shape=(8, 8, 6), fill: float | None = None) -> None:
    data = np.random.default_rng(0).uniform(-1000, 1000, shape).astype(np.float32)
    if fill is not None:
        data[0, 0, 0] = fill
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def write_dicom(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4095, (16, 16), dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def make_dataset(root: Path, bundle: str) -> tuple[Path, list[dict]]:
    """Four good rows (train, train, val, test; one patient each) with the columns the bundle's config reads."""
    images = root / "images"
    images.mkdir(parents=True)
    suffix = ".nii.gz" if bundle == "ctclip_lora" else ".png"
    rows = []
    for i, split in enumerate(("train", "train", "val", "test")):
        name = f"images/{i}{suffix}"
        (write_nifti if bundle == "ctclip_lora" else write_png)(root / name)
        rows.append(
            {
                "image": name,
                "report": f"FINDINGS: Study {i} shows a small effusion. IMPRESSION: Effusion.",
                "label": i % 2,
                "Effusion": i % 2,
                "split": split,
                "patient_id": f"p{i}",
            }
        )
    return root / "manifest.csv", rows


def parse(bundle: str, root: Path, manifest: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser.update({"dataset_dir": str(root), "manifest": str(manifest), "class_names": ["Effusion"]})
    if bundle == "cleft_cxr":
        parser["caption_source"] = "report"  # cleft reads reports only when asked
    if bundle == "frozen_projection":
        parser["class_names"] = None  # its label column holds class indices here
    parser.update(overrides)
    return parser


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def last_line(bundle: str, root: Path, manifest: Path, key: str | None = None, **overrides) -> str:
    """The root-cause line of the failure (what a failed bundle run prints last); the data are left untouched."""
    before = digest(root)
    parser = parse(bundle, root, manifest, **overrides)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content(key or ROWS_KEY[bundle])
    assert digest(root) == before, "the failed check changed files on disk"
    line = root_cause(info.value)
    assert line is not None, f"not recognised as bad input: {info.value!r}"
    return line


# ---- cases, each through every bundle it applies to -------------------------------------------------------------


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_missing_image(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[1]["image"] = "images/gone.png"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert "manifest.csv: row 2: field 'image': file not found" in line and "gone.png" in line


@pytest.mark.parametrize("bundle", RADIOGRAPH_BUNDLES)
def test_random_byte_dicom(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    (tmp_path / "images" / "noise.dcm").write_bytes(np.random.default_rng(1).bytes(2048))
    rows[0]["image"] = "images/noise.dcm"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert "row 1: field 'image'" in line and "noise.dcm is not a DICOM file" in line


@pytest.mark.parametrize("bundle", RADIOGRAPH_BUNDLES)
def test_truncated_dicom_names_the_row(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    write_dicom(tmp_path / "images" / "cut.dcm")
    data = (tmp_path / "images" / "cut.dcm").read_bytes()
    (tmp_path / "images" / "cut.dcm").write_bytes(data[: len(data) - 200])
    rows[0]["image"] = "images/cut.dcm"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert "row 1: field 'image'" in line and "cut.dcm" in line and ("truncated" in line or "damaged" in line)


@pytest.mark.parametrize("bundle", RADIOGRAPH_BUNDLES)
def test_text_file_named_png(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    (tmp_path / "images" / "page.png").write_text("<html><body>404 Not Found</body></html>\n")
    rows[2]["image"] = "images/page.png"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest), key=_split_key(bundle, "val"))
    assert "row 3: field 'image'" in line and "page.png is text, not an image" in line
    assert "install the reader" not in line and "InvalidDicomError" not in line


def _split_key(bundle: str, split: str) -> str:
    return (
        ROWS_KEY[bundle]
        if bundle in ("cleft_cxr", "frozen_projection")
        else f"{'validate' if split == 'val' else split}#rows"
    )


def test_four_d_nifti(tmp_path):
    manifest, rows = make_dataset(tmp_path, "ctclip_lora")
    write_nifti(tmp_path / "images" / "series.nii.gz", shape=(8, 8, 6, 3))
    rows[0]["image"] = "images/series.nii.gz"
    line = last_line("ctclip_lora", tmp_path, write_manifest(rows, manifest))
    assert "row 1: field 'image'" in line and "is a 4D image of shape (8, 8, 6, 3)" in line


def test_nifti_cut_after_its_header(tmp_path):
    manifest, rows = make_dataset(tmp_path, "ctclip_lora")
    write_nifti(tmp_path / "images" / "cut.nii.gz", shape=(32, 32, 24))
    data = (tmp_path / "images" / "cut.nii.gz").read_bytes()
    (tmp_path / "images" / "cut.nii.gz").write_bytes(data[: len(data) // 3])
    rows[0]["image"] = "images/cut.nii.gz"
    line = last_line("ctclip_lora", tmp_path, write_manifest(rows, manifest))
    assert "row 1: field 'image'" in line and "cut.nii.gz is cut short" in line


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_volume_is_refused_by_the_loader(tmp_path, value):
    write_nifti(tmp_path / "v.nii.gz", fill=value)
    with pytest.raises(ValueError) as info:
        LoadVolume()(tmp_path / "v.nii.gz", source="row 4 of m.csv, field 'image'")
    assert "row 4 of m.csv, field 'image'" in root_cause(info.value) and "NaN or infinite" in root_cause(info.value)


@pytest.mark.parametrize("bundle", REPORT_BUNDLES)
@pytest.mark.parametrize("report", ["", "FINDINGS: IMPRESSION:"])
def test_empty_or_header_only_report(tmp_path, bundle, report):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[1]["report"] = report
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert "row 2: field 'report': empty report" in line


@pytest.mark.parametrize("bundle", ["cleft_cxr", "ctclip_lora"])
def test_unknown_label_value(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[2]["Effusion"] = 3
    key = ROWS_KEY[bundle] if bundle == "cleft_cxr" else "validate#rows"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest), key=key)
    assert "row 3: field 'Effusion': label value 3 is not 0 or 1" in line


def test_unknown_class_name(tmp_path):
    manifest, rows = make_dataset(tmp_path, "frozen_projection")
    rows[0]["label"] = "Pneumonia"
    line = last_line("frozen_projection", tmp_path, write_manifest(rows, manifest), class_names=["normal", "effusion"])
    assert "row 1: field 'label': unknown label value 'Pneumonia'" in line


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_patient_in_two_splits(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[2]["patient_id"] = "p0"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert "row 3: field 'split': patient 'p0' is in both 'train' and 'val'" in line


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_missing_column_is_named_not_reported_as_empty_values(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    column = "image" if bundle == "cleft_cxr" else "report"
    for row in rows:
        del row[column]
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest))
    assert f"column(s) ['{column}'] missing; columns are" in line and "row" not in line.split("missing")[0]


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_manifest_that_is_not_utf8(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[1]["report"] = "FINDINGS: épanchement pleural."
    write_manifest(rows, manifest)
    manifest.write_bytes(manifest.read_text(encoding="utf-8").encode("latin-1"))
    line = last_line(bundle, tmp_path, manifest)
    assert f"manifest {manifest} is not UTF-8 text" in line and "(line 3)" in line and "save it as UTF-8" in line


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_relative_path_leaving_dataset_dir(tmp_path, bundle):
    data = tmp_path / "data"
    manifest, rows = make_dataset(data, bundle)
    outside = tmp_path / ("outside.nii.gz" if bundle == "ctclip_lora" else "outside.png")
    (write_nifti if bundle == "ctclip_lora" else write_png)(outside)
    rows[0]["image"] = f"../{outside.name}"
    line = last_line(bundle, data, write_manifest(rows, manifest))
    assert f"row 1: field 'image': relative path '../{outside.name}' leaves dataset_dir" in line


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_absolute_path_outside_dataset_dir_is_used_as_given(tmp_path, bundle):
    data = tmp_path / "data"
    manifest, rows = make_dataset(data, bundle)
    outside = tmp_path / ("outside.nii.gz" if bundle == "ctclip_lora" else "outside.png")
    (write_nifti if bundle == "ctclip_lora" else write_png)(outside)
    rows[0]["image"] = str(outside)
    loaded = parse(bundle, data, write_manifest(rows, manifest)).get_parsed_content(ROWS_KEY[bundle])
    assert loaded[0]["image"] == str(outside)


@pytest.mark.parametrize("bundle", ["report_gen", "ctclip_lora"])
def test_empty_validation_split(tmp_path, bundle):
    manifest, rows = make_dataset(tmp_path, bundle)
    rows[2]["split"] = "test"
    line = last_line(bundle, tmp_path, write_manifest(rows, manifest), key="validate#rows")
    assert "no rows left for split ['val']" in line or "no usable rows for split 'val'" in line


def test_empty_validation_split_cleft(tmp_path):
    manifest, rows = make_dataset(tmp_path, "cleft_cxr")
    rows[2]["split"] = "test"
    line = last_line("cleft_cxr", tmp_path, write_manifest(rows, manifest), key="validate#dataset#data")
    assert "split 'val' has 0 row(s), at least 1 needed" in line


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_skip_bad_rows_skips_a_corrupt_image_up_front(tmp_path, bundle, caplog):
    manifest, rows = make_dataset(tmp_path, bundle)
    suffix = ".nii.gz" if bundle == "ctclip_lora" else ".png"
    (tmp_path / "images" / f"bad{suffix}").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows[1]["image"] = f"images/bad{suffix}"
    manifest = write_manifest(rows, manifest)
    line = last_line(bundle, tmp_path, manifest)
    assert "row 2: field 'image'" in line and f"bad{suffix}" in line
    with caplog.at_level(logging.WARNING):
        kept = parse(bundle, tmp_path, manifest, skip_bad_rows=True).get_parsed_content(ROWS_KEY[bundle])
    assert 2 not in [r["row"] for r in kept] and 1 in [r["row"] for r in kept]
    assert caplog.text.count("skipping bad row") == 1 and "skipped 1 bad row(s) of 4" in caplog.text


# ---- checkpoints: a pickle payload is refused, saying why ---------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("reader", [read_state_dict, read_official_state_dict], ids=["ctclip", "cleft"])
def test_pickled_checkpoint_is_refused_saying_why(tmp_path, reader, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as info:
        reader(path)
    line = root_cause(info.value)
    assert "pickles the object print besides tensors" in line and "is not read: loading it would run code" in line
    assert "will likely succeed" not in str(info.value)  # torch's invitation to retry with weights_only=False
    assert "this ran" not in capsys.readouterr().out and path.read_bytes() == before
