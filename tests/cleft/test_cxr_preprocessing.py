"""The official body-crop + padding preprocessing as a MONAI transform: shapes, crop, aspect, named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.cxr_preprocessing import CXRBodyCropd, otsu_threshold
from common.data.image_loading import LoadRadiographd


def test_otsu_threshold_splits_two_modes():
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.8)]) + np.random.default_rng(0).normal(0, 0.01, 1000)
    assert 0.15 < otsu_threshold(values) < 0.75


def test_body_crop_removes_black_border_and_outputs_three_channels():
    image = torch.zeros(1, 100, 60)
    image[:, 20:80, 10:50] = 0.5 + 0.5 * torch.rand(1, 60, 40)  # the body inside a black border
    out = CXRBodyCropd(keys="image", image_size=32, pad_size=64)({"image": image})["image"]
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out[0], out[2])  # grey repeated
    assert out.min() > 0.2  # the zero border and the zero padding are cropped away


def test_keep_aspect_ratio_pads_instead_of_stretching():
    image = torch.zeros(1, 100, 50)
    image[:, :, :] = 0.5 + 0.5 * torch.rand(1, 100, 50)
    stretched = CXRBodyCropd(keys="image", image_size=32, pad_size=64, body_crop=False)({"image": image})["image"]
    kept = CXRBodyCropd(keys="image", image_size=32, pad_size=64, body_crop=False, keep_aspect_ratio=True)(
        {"image": image}
    )["image"]
    assert stretched.shape == kept.shape == (3, 32, 32)
    assert (kept[0, :, 0] == 0).all() and (kept[0, :, -1] == 0).all()  # padded columns at the sides


def test_image_that_is_not_2d_is_a_named_error():
    with pytest.raises(ValueError, match="field 'image'.*2D"):
        CXRBodyCropd(keys="image")({"image": torch.zeros(1, 8, 8, 8)})


def test_real_radiographs_load_and_preprocess(shared_data_dir):
    transform = CXRBodyCropd(keys="image", image_size=224)
    for relative in (
        "cxr/nih/00000001_000.png",
        "cxr/tbx11k/imgs/tb/tb0005.png",
        "cxr/siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    ):
        data = LoadRadiographd(keys="image")({"image": str(shared_data_dir / relative)})
        out = transform(data)["image"]
        assert out.shape == (3, 224, 224), relative
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 0.05, relative
