"""CT-CLIP preprocessing: real chest CT to (1, 240, 480, 480), official resampling parity, HU handling, bad input."""

from __future__ import annotations

import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data.ct_preprocessing import check_preprocessed, ct_clip_transforms, looks_like_hu


def _raises_named(pipeline, data, pattern):
    """MONAI's Compose wraps a transform's error in RuntimeError; the named ValueError is its cause."""
    with pytest.raises((ValueError, RuntimeError)) as info:
        pipeline(data)
    error = info.value
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, ValueError), repr(error)
    assert re.search(pattern, str(error)), str(error)


def _write_nifti(path, array, spacing=(1.0, 1.0, 2.0)):
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS on disk, as CT-RATE
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _official(array_hu, spacing, target=(0.75, 0.75, 1.5), size=(480, 480, 240)):
    """scripts/data_inference_nii.py of CT-CLIP, written out: interpolate, clip, /1000, crop/pad, permute."""
    t = torch.tensor(array_hu, dtype=torch.float32).permute(2, 0, 1)[None, None]  # (1, 1, z, x, y)
    new = [
        int(t.shape[2] * spacing[2] / target[2]),
        int(t.shape[3] * spacing[0] / target[0]),
        int(t.shape[4] * spacing[1] / target[1]),
    ]
    t = F.interpolate(t, size=new, mode="trilinear", align_corners=False)[0, 0].permute(1, 2, 0)
    t = t.clamp(-1000, 1000) / 1000
    starts = [max((n - d) // 2, 0) for n, d in zip(t.shape, size)]
    t = t[tuple(slice(s, min(s + d, n)) for s, d, n in zip(starts, size, t.shape))]
    pads = []
    for n, d in zip(reversed(t.shape), reversed(size)):
        before = (d - n) // 2
        pads += [before, d - n - before]
    return F.pad(t, pads, value=-1).permute(2, 0, 1)[None]


@pytest.mark.slow
def test_real_chest_ct_preprocesses_to_official_shape(shared_data_dir):
    path = shared_data_dir / "ct" / "totalseg_chest_cta" / "ct_cropped.nii.gz"
    volume = ct_clip_transforms()({"image": str(path)})["image"]
    assert tuple(volume.shape) == (1, 240, 480, 480)
    assert volume.min() >= -1 and volume.max() <= 1
    assert (volume > -1).float().mean() > 0.05  # real anatomy, not only padding
    check_preprocessed(volume)


def test_official_resampling_is_reproduced_exactly(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.uniform(-1200, 1500, size=(20, 18, 11)).astype(np.float32)
    spacing = (0.9, 1.1, 2.5)  # 0.9 is not exact in float32: the spacing must be read as the decimal
    path = _write_nifti(tmp_path / "vol.nii.gz", array, spacing)
    size = (16, 20, 12)
    ours = ct_clip_transforms(resampling="official", spatial_size=size)({"image": str(path)})["image"]
    expected = _official(array, spacing, size=size)
    torch.testing.assert_close(ours.as_tensor(), expected, rtol=0, atol=1e-6)


def test_orientation_is_set_explicitly(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.uniform(-1000, 1000, size=(8, 6, 4)).astype(np.float32)
    lps = _write_nifti(tmp_path / "lps.nii.gz", array, (0.75, 0.75, 1.5))
    ras_affine = np.diag([0.75, 0.75, 1.5, 1.0])  # same voxels, flipped x and y on disk
    nib.save(nib.Nifti1Image(array[::-1, ::-1].copy(), ras_affine), str(tmp_path / "ras.nii.gz"))
    pipeline = ct_clip_transforms(spatial_size=(8, 6, 4))
    a = pipeline({"image": str(lps)})["image"]
    b = pipeline({"image": str(tmp_path / "ras.nii.gz")})["image"]
    torch.testing.assert_close(a.as_tensor(), b.as_tensor())


def test_hu_rescale_applied_once(tmp_path):
    stored = np.full((10, 10, 6), 24, dtype=np.float32)  # air stored as 24 with intercept -1024
    stored[3:7, 3:7] = 1064  # +40 HU soft tissue
    raw = _write_nifti(tmp_path / "raw_1.nii.gz", stored, (0.75, 0.75, 1.5))
    hu = _write_nifti(tmp_path / "hu_1.nii.gz", stored - 1024, (0.75, 0.75, 1.5))
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("VolumeName,RescaleSlope,RescaleIntercept\nraw_1.nii.gz,1,-1024\nhu_1.nii.gz,1,-1024\n")
    pipeline = ct_clip_transforms(metadata_csv=csv_path, spatial_size=(10, 10, 6))
    from_raw = pipeline({"image": str(raw)})["image"]
    from_hu = pipeline({"image": str(hu)})["image"]
    torch.testing.assert_close(from_raw.as_tensor(), from_hu.as_tensor())
    assert from_raw.max().item() == pytest.approx(0.04, abs=1e-4)  # 40 HU / 1000, not -984 HU
    official = ct_clip_transforms(
        metadata_csv=csv_path, hu_mode="rescale", spatial_size=(10, 10, 6), check_content=False
    )
    assert official({"image": str(hu)})["image"].max() < -0.9  # the official double rescale, reproduced on request
    assert looks_like_hu(torch.tensor(stored - 1024)) and not looks_like_hu(torch.tensor(stored))
    _raises_named(
        ct_clip_transforms(metadata_csv=csv_path, hu_mode="rescale", spatial_size=(10, 10, 6)),
        {"image": str(hu)},
        "hu_1.nii.gz.*not Hounsfield units",
    )  # the double rescale is refused unless asked for


def test_missing_metadata_row_is_named(tmp_path):
    path = _write_nifti(tmp_path / "absent.nii.gz", np.zeros((4, 4, 4), np.float32))
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("VolumeName,RescaleSlope,RescaleIntercept\nother.nii.gz,1,-1024\n")
    _raises_named(
        ct_clip_transforms(metadata_csv=csv_path, spatial_size=(4, 4, 4)), {"image": str(path)}, "absent.nii.gz"
    )
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("VolumeName,Slope\nx,1\n")
    with pytest.raises(ValueError, match="RescaleIntercept"):
        ct_clip_transforms(metadata_csv=bad_csv)


def test_bad_volumes_are_named(tmp_path):
    pipeline = ct_clip_transforms(spatial_size=(4, 4, 4))
    flat = _write_nifti(tmp_path / "flat.nii.gz", np.zeros((4, 4), np.float32))
    _raises_named(pipeline, {"image": str(flat)}, "flat.nii.gz.*expected")
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 1, 1] = np.nan
    _raises_named(pipeline, {"image": str(_write_nifti(tmp_path / "nan.nii.gz", nan))}, "nan.nii.gz.*NaN")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a nifti")
    _raises_named(pipeline, {"image": str(corrupt)}, "corrupt.nii.gz")


def test_dicom_folder_with_two_series_is_refused(tmp_path, shared_data_dir):
    import pydicom

    source = shared_data_dir / "ct" / "totalseg_abdomen_dicom"
    folder = tmp_path / "mixed"
    shutil.copytree(source, folder)
    files = sorted(folder.iterdir())
    for file in files[:3]:
        ds = pydicom.dcmread(str(file))
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.save_as(str(file))
    _raises_named(
        ct_clip_transforms(spatial_size=(8, 8, 8)), {"image": str(folder)}, "mixed.*holds 2 series.*1.2.3.4.5"
    )


def test_dicom_series_loads(shared_data_dir):
    volume = ct_clip_transforms(spatial_size=(64, 64, 32))(
        {"image": str(shared_data_dir / "ct" / "totalseg_abdomen_dicom")}
    )["image"]
    assert tuple(volume.shape) == (1, 32, 64, 64)
    assert volume.min() >= -1 and volume.max() <= 1
