"""The real files in ../shared/data load with the expected shapes and orientation; corrupt input is named."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.data import ITKReader
from monai.transforms import LoadImage, Orientation

from common.data.image_loading import LoadRadiograph, LoadRadiographd, LoadVolume

SIIM = "cxr/siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
SIIM_MONO1 = "cxr/siim/Fake_MONOHR1.dcm"


def test_dicom_radiograph_is_2d_in_display_orientation(shared_data_dir):
    image = LoadRadiograph()(shared_data_dir / SIIM)
    assert image.shape == (1, 1024, 1024)  # the trailing singleton depth axis is squeezed
    pixels = pydicom.dcmread(shared_data_dir / SIIM).pixel_array
    np.testing.assert_array_equal(image[0].numpy(), pixels.astype(np.float32))  # (rows, cols), not transposed


def test_monochrome1_is_inverted_like_itk(shared_data_dir):
    mono1 = LoadRadiograph()(shared_data_dir / SIIM_MONO1)
    mono2 = LoadRadiograph()(shared_data_dir / SIIM)
    np.testing.assert_array_equal(mono1.numpy(), 255.0 - mono2.numpy())  # same stored pixels, mirrored display
    itk = LoadImage(reader=ITKReader(), image_only=True, ensure_channel_first=True)(str(shared_data_dir / SIIM_MONO1))
    np.testing.assert_array_equal(mono1[0].numpy(), itk[0, ..., 0].numpy().T)  # ITK's MONOCHROME1 handling agrees


def test_rgb_png_with_grey_content_becomes_one_channel(shared_data_dir):
    path = shared_data_dir / "cxr/tbx11k/imgs/tb/tb0005.png"
    image = LoadRadiograph()(path)
    assert image.shape == (1, 512, 512)
    raw = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    assert raw.shape[0] == 3  # what MONAI gives without the reduction


def test_grey_png_matches_pil(shared_data_dir):
    from PIL import Image

    path = shared_data_dir / "cxr/nih/00000001_000.png"
    image = LoadRadiograph()(path)
    np.testing.assert_array_equal(image[0].numpy(), np.asarray(Image.open(path), dtype=np.float32))


def test_dict_transform_names_the_manifest_row(tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"broken.png .*row 7 of m.csv, field 'image'"):
        LoadRadiographd(keys="image")({"image": str(corrupt), "row": 7, "manifest": "m.csv"})
    with pytest.raises(FileNotFoundError, match="missing.png"):
        LoadRadiograph()(tmp_path / "missing.png")


def test_corrupt_dicom_is_named(tmp_path):
    corrupt = tmp_path / "bad.dcm"
    corrupt.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02\x03")
    with pytest.raises(ValueError, match="bad.dcm"):
        LoadRadiograph()(corrupt)


def test_3d_volume_is_rejected_as_radiograph(shared_data_dir):
    with pytest.raises(ValueError, match="unsupported radiograph file type|not a 2D radiograph"):
        LoadRadiograph()(shared_data_dir / "ct/totalseg_chest_cta/ct_cropped.nii.gz")


def test_nifti_and_dicom_series_volumes(shared_data_dir):
    chest = LoadVolume()(shared_data_dir / "ct/totalseg_chest_cta/ct_cropped.nii.gz")
    assert chest.shape == (1, 120, 126, 164)
    series = LoadVolume()(shared_data_dir / "ct/totalseg_abdomen_dicom")
    assert series.shape == (1, 512, 512, 20)
    assert series.min() == -1024  # rescale intercept applied: Hounsfield units


def test_dicom_series_readers_agree_after_explicit_orientation(shared_data_dir):
    folder = shared_data_dir / "ct/totalseg_abdomen_dicom"
    ours = Orientation(axcodes="RAS")(LoadVolume()(folder))
    itk = Orientation(axcodes="RAS")(
        LoadImage(reader=ITKReader(), image_only=True, ensure_channel_first=True)(str(folder))
    )
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(itk).float())


def test_corrupt_nifti_is_named(tmp_path):
    corrupt = tmp_path / "scan.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="scan.nii.gz"):
        LoadVolume()(corrupt)
