"""The ctclip demo overlay's crop on the real chest CT (../shared/data) is a warning with the figures, once per run."""

from __future__ import annotations

import logging
import re

import pytest
from monai.bundle import ConfigParser

from common.data import crop_coverage
from common.data.crop_coverage import crop_kept_fraction

CONFIGS = ["bundles/ctclip_lora/configs/train.json", "bundles/ctclip_lora/configs/demo.json"]


@pytest.fixture
def real_ct(shared_data_dir, require_fixture):
    return require_fixture(shared_data_dir / "ct" / "totalseg_chest_cta" / "ct_cropped.nii.gz", "real chest CT")


def _preprocessing(repo_root, tmp_path, spatial_size=None):
    parser = ConfigParser()
    parser.read_config([str(repo_root / c) for c in CONFIGS])
    parser["bundle_root"] = str(tmp_path)
    parser["hu_metadata_csv"] = ""  # the real CT is in HU; the demo's CSV names only the demo volumes
    if spatial_size is not None:
        parser["spatial_size"] = spatial_size
    return parser.get_parsed_content("preprocessing")


def test_the_demo_crop_on_a_real_ct_warns_once_with_the_figures(repo_root, tmp_path, real_ct, caplog, monkeypatch):
    monkeypatch.setattr(crop_coverage, "_warned", set())
    preprocessing = _preprocessing(repo_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="common.data.crop_coverage"):
        out = preprocessing({"image": str(real_ct)})
        preprocessing({"image": str(real_ct)})
    assert tuple(out["image"].shape) == (1, 24, 32, 32)  # what the demo scores: a 2.4 cm cube
    warnings = [r.getMessage() for r in caplog.records if r.name == "common.data.crop_coverage"]
    assert len(warnings) == 1  # once per run, not per volume or epoch
    found = re.search(
        r"\((\d+) x (\d+) x (\d+) voxels = (\d+) x (\d+) x (\d+) mm; crop = 24 x 24 x 36 mm\)", warnings[0]
    )
    assert found, warnings[0]
    shape, size_mm = [int(v) for v in found.groups()[:3]], [int(v) for v in found.groups()[3:]]
    # 120 x 126 x 164 voxels at 1.5 mm, resampled to 0.75 x 0.75 x 1.5 mm: 180 x 189 x 246 mm
    assert size_mm == pytest.approx([180, 189, 246], abs=2) and shape[2] == 164
    kept = crop_kept_fraction(shape, [32, 32, 24])
    assert kept < 0.01 and f"keeps {100 * kept:.2f}% of the voxels of {real_ct}" in warnings[0]


def test_a_crop_that_keeps_most_of_the_volume_is_silent(repo_root, tmp_path, real_ct, caplog, monkeypatch):
    monkeypatch.setattr(crop_coverage, "_warned", set())
    preprocessing = _preprocessing(repo_root, tmp_path, spatial_size=[240, 240, 160])
    with caplog.at_level(logging.WARNING, logger="common.data.crop_coverage"):
        preprocessing({"image": str(real_ct)})
    assert not [r for r in caplog.records if r.name == "common.data.crop_coverage"]
