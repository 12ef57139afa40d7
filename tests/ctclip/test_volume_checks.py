"""Broken CT is refused with the file named: blank-UID series mixed in one folder, a bad slice, a cut NIfTI."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pydicom
import pytest

from common.data.image_loading import LoadVolume
from common.data.volume_checks import check_ct_content, check_dicom_series


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def series(tmp_path, shared_data_dir):
    """A writable copy of the real sample series (its SeriesInstanceUIDs are blank, as is common)."""
    source = shared_data_dir / "ct" / "totalseg_abdomen_dicom"
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    assert pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True).SeriesInstanceUID == ""
    return folder


def test_real_series_passes(shared_data_dir):
    assert check_dicom_series(shared_data_dir / "ct" / "totalseg_abdomen_dicom") == 20


def test_two_blank_uid_series_in_one_folder_are_refused(series):
    # a second reconstruction of the same scan, shifted by 0.97 mm, numbered 1.. like the first: MONAI interleaves them
    for file in sorted(series.iterdir()):
        ds = pydicom.dcmread(str(file))
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.97]
        ds.save_as(str(series / f"second_{file.name}"))
    before = _digest(series)
    with pytest.raises(ValueError, match=r"series.*share InstanceNumber 2\d\d: two series in one folder"):
        LoadVolume()(series)
    assert _digest(series) == before


def test_interleaved_series_with_distinct_numbers_are_refused(series):
    for file in sorted(series.iterdir()):
        ds = pydicom.dcmread(str(file))
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.97]
        ds.InstanceNumber = int(ds.InstanceNumber) + 1000
        ds.save_as(str(series / f"second_{file.name}"))
    with pytest.raises(ValueError, match=r"slice step .* differs .*two interleaved series"):
        LoadVolume()(series)


def test_one_unreadable_slice_is_refused(series):
    bad = sorted(series.iterdir())[7]
    bad.write_bytes(bad.read_bytes()[:2000])  # cut inside the pixel data: MONAI skips it with a warning
    with pytest.raises(ValueError, match=rf"file {bad.name} is not a readable DICOM slice.*re-export"):
        LoadVolume()(series, source="row 3 of m.csv, field 'image'")


def test_gap_and_duplicate_position_are_refused(series):
    files = sorted(series.iterdir())
    files[10].unlink()
    with pytest.raises(ValueError, match=r"slice step -4.000 mm .*differs from the series' 2.000 mm.*missing slice"):
        check_dicom_series(series)
    ds = pydicom.dcmread(str(files[4]))
    ds.ImagePositionPatient = pydicom.dcmread(str(files[3])).ImagePositionPatient
    ds.save_as(str(files[4]))
    with pytest.raises(ValueError, match=rf"{files[3].name} and {files[4].name} lie at the same position"):
        check_dicom_series(series)


def test_nifti_cut_to_its_header_is_refused(tmp_path, shared_data_dir):
    raw = (shared_data_dir / "ct" / "totalseg_abdomen" / "example_ct.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[:400])  # nibabel reads the header and returns the missing data as zeros
    volume = LoadVolume()(cut)
    assert volume.shape == (1, 122, 101, 112)  # full shape: the trap
    with pytest.raises(ValueError, match=r"cut.nii.gz.*share one value.*truncated"):
        check_ct_content(volume, str(cut))


def test_content_check_in_the_pipeline(tmp_path):
    import nibabel as nib

    from common.data.ct_preprocessing import ct_clip_transforms

    path = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(path))
    with pytest.raises(RuntimeError) as info:
        ct_clip_transforms(spatial_size=(4, 4, 4))({"image": str(path), "row": 2, "manifest": "m.csv"})
    assert "zeros.nii.gz (row 2 of m.csv, field 'image') is constant" in str(info.value.__cause__)
    stored = np.random.default_rng(0).integers(5000, 9000, size=(8, 8, 8)).astype(np.int16)
    with pytest.raises(ValueError, match="not Hounsfield units"):
        check_ct_content(stored[None], "stored.nii.gz")
    real = np.random.default_rng(0).normal(-500, 400, size=(1, 8, 8, 8))
    check_ct_content(real, "real")


def test_truncated_uncompressed_slice_is_refused(tmp_path, shared_data_dir):
    folder = tmp_path / "plain"
    folder.mkdir()
    for file in sorted((shared_data_dir / "ct" / "totalseg_abdomen_dicom").iterdir())[:4]:
        ds = pydicom.dcmread(str(file))
        ds.decompress()  # explicit VR little endian: the cheap byte-count check applies
        ds.save_as(str(folder / file.name))
    assert check_dicom_series(folder) == 4
    bad = sorted(folder.iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=rf"file {bad.name} is not a readable DICOM slice"):
        check_dicom_series(folder)
