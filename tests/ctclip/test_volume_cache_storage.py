"""The CT volume cache stores int16 HU when exact, float16 otherwise; never uses a half-written entry; builds resumably
in workers; and CT-CLIP latents / zero-shot probabilities from cached real CT match those from fresh preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

import common.data.volume_encoding as volume_encoding
from common.data.ct_preprocessing import ct_clip_transforms
from common.data.volume_cache import VolumeCacheDataset
from common.data.volume_encoding import decode_array, encode_array, hu_grid_decoder, hu_grid_to_values

REAL_CT = ("ct", "totalseg_chest_cta", "ct_cropped.nii.gz")


def _volume(path, spacing=1.5, seed=0, shape=(8, 8, 6)):
    hu = np.random.default_rng(seed).integers(-1200, 1200, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([-spacing, -spacing, 2 * spacing, 1.0])), str(path))
    return str(path)


def _pipeline(pixdim=(1.5, 1.5, 3.0), spatial_size=(8, 8, 8)):
    return ct_clip_transforms(spatial_size=spatial_size, pixdim=pixdim, check_content=False)


def _entry(cache):
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry, json.loads((entry / "entry.json").read_text())["arrays"]["image"]


def test_integer_hu_on_the_grid_is_int16_and_bit_exact(tmp_path):
    row = {"image": _volume(tmp_path / "a.nii.gz")}  # already at the target spacing: no interpolation
    fresh = _pipeline()(dict(row))["image"].as_tensor()
    cached = VolumeCacheDataset([row], _pipeline(), tmp_path / "cache")[0]["image"]
    entry, info = _entry(tmp_path / "cache")
    assert info["dtype"] == "int16" and info["hu_grid"] == [-1000.0, 1000.0, -1.0, 1.0]
    assert cached.dtype == torch.float32 and torch.equal(cached, fresh)
    stored = np.load(entry / "image.npy", mmap_mode="r")
    assert stored.dtype == np.int16 and stored.min() >= -1000 and stored.max() <= 1000


def test_resampled_volume_is_int16_in_fractions_of_a_hu(tmp_path):
    row = {"image": _volume(tmp_path / "a.nii.gz", spacing=2.0)}  # resampled: HU between the integers
    fresh = _pipeline()(dict(row))["image"].as_tensor()
    cached = VolumeCacheDataset([row], _pipeline(), tmp_path / "cache")[0]["image"]
    entry, info = _entry(tmp_path / "cache")
    assert (info["dtype"], info["steps_per_hu"]) == ("int16", 32)
    assert not torch.equal(cached, fresh)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=1.6e-5)  # 1/64 HU on the [-1, 1] scale
    assert info["max_abs_error"] == float((cached - fresh).abs().max()) > 0
    assert (entry / "image.npy").stat().st_size < fresh.numel() * 2 + 256


def test_float16_without_a_hu_grid():
    values = torch.linspace(-3.0, 3.0, 1000)
    stored, info = encode_array(values, grid=None)
    assert stored.dtype == np.float16 and info["hu_grid"] is None
    decoded = decode_array(stored, info)
    assert decoded.dtype == torch.float32 and float((decoded - values).abs().max()) == info["max_abs_error"] <= 2e-3


@pytest.mark.parametrize(
    ("grid", "steps_per_hu", "reduced"),
    [
        ((-1000.0, 1000.0, -1.0, 1.0), 1, True),  # CT-CLIP's grid, integer HU
        ((-1000.0, 1000.0, -1.0, 1.0), 32, True),  # CT-CLIP's grid, resampled (1/32-HU steps)
        ((-1000.0, 1000.0, 0.0, 3.0), 32, False),  # the folded divisor rounds differently: hu_grid_to_values' steps
        ((-1024.0, 3071.0, 0.0, 255.0), 1, False),
    ],
)
def test_decode_equals_the_reference_on_every_code(tmp_path, monkeypatch, grid, steps_per_hu, reduced):
    """Every int16 code, memory-mapped, decoded in chunks of which some need the clamp and some skip it."""
    monkeypatch.setattr(volume_encoding, "_DECODE_CHUNK", 1000)  # 66 chunks, the last one partial
    codes = np.arange(-32768, 32768, dtype=np.int16).reshape(1, 256, 256)
    np.save(tmp_path / "codes.npy", codes)
    stored = np.load(tmp_path / "codes.npy", mmap_mode="r")
    info = {"decoded_dtype": "float32", "hu_grid": list(grid), "steps_per_hu": steps_per_hu}
    decoded = decode_array(stored, info)
    reference = hu_grid_to_values(torch.from_numpy(codes), grid, steps_per_hu)
    assert decoded.dtype == torch.float32 and decoded.shape == (1, 256, 256)
    assert torch.equal(decoded.view(torch.int32), reference.view(torch.int32))  # bit for bit, -0.0 included
    chain = hu_grid_decoder(tuple(grid), steps_per_hu)
    assert chain.reduced == reduced
    assert chain.unclamped_codes == (grid[0] * steps_per_hu, min(grid[1] * steps_per_hu, 32767))
    decoded += 1  # a fresh writable tensor: the cache file is untouched
    assert np.array_equal(np.load(tmp_path / "codes.npy"), codes)


def test_killed_build_leaves_nothing_readable_and_resumes(tmp_path):
    path = _volume(tmp_path / "a.nii.gz")
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        import common.data.volume_cache as vc
        from common.data.ct_preprocessing import ct_clip_transforms
        def half_then_die(file, array, **kwargs):
            open(file, "wb").write(array.tobytes()[: array.nbytes // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        vc.np.save = half_then_die
        pipe = ct_clip_transforms(spatial_size=(8, 8, 8), pixdim=(1.5, 1.5, 3.0), check_content=False)
        vc.VolumeCacheDataset([{{"image": {path!r}}}], pipe, {str(cache)!r})[0]
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    leftovers = list(cache.iterdir())
    assert leftovers and all(p.name.startswith(".") and ".tmp-" in p.name for p in leftovers)
    dataset = VolumeCacheDataset([{"image": path}, {"image": path}], _pipeline(), cache)
    summary = dataset.build(num_workers=0, progress=False, stale_seconds=0)
    assert (summary["entries"], summary["built"], summary["removed_partial"]) == (1, 1, 1)
    assert [p.name.startswith(".") for p in cache.iterdir()] == [False]
    assert torch.equal(dataset[0]["image"], _pipeline()({"image": path})["image"].as_tensor())


def test_build_in_workers_is_resumable(tmp_path):
    rows = [{"image": _volume(tmp_path / f"{i}.nii.gz", seed=i)} for i in range(3)]
    rows.append(dict(rows[0]))  # the same file twice: one entry
    dataset = VolumeCacheDataset(rows, _pipeline(), tmp_path / "cache")
    first = dataset.build(num_workers=2, progress=False)
    assert (first["rows"], first["entries"], first["built"], first["cached"]) == (4, 3, 3, 0)
    again = dataset.build(num_workers=2, progress=False)
    assert (again["built"], again["cached"]) == (0, 3)
    entry = dataset.entry_path(rows[1])
    (entry / "entry.json").unlink()  # an entry without its description is not an entry
    assert dataset.build(num_workers=0, progress=False)["built"] == 1
    for row in rows:
        assert torch.equal(dataset[rows.index(row)]["image"], _pipeline()(dict(row))["image"].as_tensor())


def _tiny_ctclip():
    from common.methods.ctclip.model import CTCLIP

    ctvit = {
        "dim": 32,
        "codebook_size": 512,
        "image_size": 64,
        "patch_size": 8,
        "temporal_patch_size": 4,
        "spatial_depth": 2,
        "temporal_depth": 2,
        "dim_head": 8,
        "heads": 2,
    }
    bert = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    return CTCLIP.from_config(ctvit_config=ctvit, bert_config=bert, dim_latent=32, init_seed=0).eval()


@pytest.mark.parametrize(("pixdim", "steps_per_hu"), [((2.1, 2.1, 4.2), 32), ((3.0, 3.0, 3.0), 1)])
def test_real_ct_latents_and_zero_shot_from_cache_match_fresh(
    tmp_path, pixdim, steps_per_hu, shared_data_dir, require_fixture
):
    """1.5 mm -> 3 mm samples the original voxels (integer HU: exact); 2.1 mm interpolates (1/32-HU steps)."""
    from common.methods.ctclip.model import zero_shot_probabilities
    from common.metrics.zero_shot import CT_RATE_PATHOLOGIES

    ct = require_fixture(shared_data_dir.joinpath(*REAL_CT), "real chest CT (TotalSegmentator ct_cropped.nii.gz)")
    pipe = ct_clip_transforms(pixdim=pixdim, spatial_size=(64, 64, 32))
    fresh = pipe({"image": str(ct)})["image"].as_tensor()[None]
    cached = VolumeCacheDataset([{"image": str(ct)}], pipe, tmp_path / "cache")[0]["image"][None]
    info = _entry(tmp_path / "cache")[1]
    assert (info["dtype"], info["steps_per_hu"]) == ("int16", steps_per_hu)
    assert torch.equal(cached, fresh) == (steps_per_hu == 1)  # interpolated HU are rounded to 1/32 HU
    model = _tiny_ctclip()
    generator = torch.Generator().manual_seed(0)
    prompts = torch.nn.functional.normalize(torch.randn(2 * len(CT_RATE_PATHOLOGIES), 32, generator=generator), dim=-1)
    with torch.no_grad():
        latents = model.encode_volume(torch.cat([fresh, cached]))
        probs = zero_shot_probabilities(latents, prompts, torch.tensor(100.0))  # a sharp scale: CT-CLIP's learnt one
    torch.testing.assert_close(latents[1], latents[0], rtol=0, atol=1e-4)
    assert (probs[1] - probs[0]).abs().max() <= 1e-4
