"""The CT volume cache is keyed by the file and the preprocessing: one file cached once, a new hu_range misses."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from common.data.ct_preprocessing import ct_clip_transforms
from common.data.volume_cache import VolumeCacheDataset, transform_fingerprint


def _volume(path, seed=0):
    array = np.random.default_rng(seed).normal(-300, 400, size=(8, 8, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([-1.5, -1.5, 3.0, 1.0])), str(path))
    return str(path)


def _pipeline(hu_range=(-1000.0, 1000.0)):
    return ct_clip_transforms(spatial_size=(8, 8, 8), pixdim=(1.5, 1.5, 3.0), hu_range=hu_range)


def test_changing_hu_range_misses_the_cache(tmp_path):
    rows = [{"image": _volume(tmp_path / "a.nii.gz"), "row": 2, "manifest": "m.csv"}]
    cache = tmp_path / "cache"
    wide = VolumeCacheDataset(rows, _pipeline(), cache)[0]["image"]
    narrow = VolumeCacheDataset(rows, _pipeline((-200.0, 200.0)), cache)[0]["image"]
    assert not torch.equal(wide, narrow)
    fresh = _pipeline((-200.0, 200.0))(dict(rows[0]))["image"].as_tensor()
    torch.testing.assert_close(narrow, fresh, rtol=0, atol=2e-5)  # int16 in 1/128-HU steps: <= 1/256 HU
    assert len([p for p in cache.iterdir() if (p / "entry.json").is_file()]) == 2


def test_same_file_in_two_manifests_is_cached_once(tmp_path):
    path = _volume(tmp_path / "a.nii.gz")
    cache = tmp_path / "cache"
    first = VolumeCacheDataset([{"image": path, "label": 0, "row": 2, "manifest": "one.csv"}], _pipeline(), cache)
    first[0]

    def files():
        return {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}

    stored = files()
    other = [{"image": "x"}, {"image": str(tmp_path / "." / "a.nii.gz"), "label": 1, "row": 7, "manifest": "two.csv"}]
    item = VolumeCacheDataset(other, _pipeline(), cache)[1]
    assert {
        p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()
    } == stored  # one file, untouched
    assert (item["label"], item["row"], item["manifest"]) == (1, 7, "two.csv")  # the row's fields, not the cache's


def test_changed_file_misses_and_fingerprint_is_stable(tmp_path):
    path = _volume(tmp_path / "a.nii.gz")
    cache = tmp_path / "cache"
    before = VolumeCacheDataset([{"image": path}], _pipeline(), cache)[0]["image"]
    _volume(tmp_path / "a.nii.gz", seed=1)
    after = VolumeCacheDataset([{"image": path}], _pipeline(), cache)[0]["image"]
    assert not torch.equal(before, after)
    assert transform_fingerprint(_pipeline().transforms) == transform_fingerprint(_pipeline().transforms)
