"""Real HF vision folders are preprocessed by their own AutoImageProcessor (resize, crop, rescale, normalise);
its settings are part of the embedding cache key; a folder's remote code is never run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

import common.vision.image_processor as image_processor_module
from common.data.embedding_cache import EmbeddingCache
from common.vision.frozen_image_encoder import FrozenImageEncoder
from common.vision.image_processor import ImageProcessord, image_processor_output_size, load_image_processor

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8}


def _dinov2_folder(path, crop=32, shortest_edge=40):
    Dinov2Model(Dinov2Config(image_size=32, **TINY)).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": shortest_edge},
        crop_size={"height": crop, "width": crop},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


def _vit_folder(path):
    ViTModel(ViTConfig(image_size=32, **TINY)).save_pretrained(path)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(path)
    return path


@pytest.fixture
def grey_png(tmp_path):
    """A 50 wide x 70 high 8-bit grey radiograph using the full 0..255 range."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(70, 50), dtype=np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    path = tmp_path / "cxr.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("make_folder", [_dinov2_folder, _vit_folder], ids=["dinov2_shortest_edge_crop", "vit"])
def test_frozen_encoder_preprocessing_equals_the_folders_processor(tmp_path, grey_png, make_folder):
    folder = make_folder(tmp_path / "model")
    reference = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    expected = reference(images=Image.open(grey_png).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    encoder = FrozenImageEncoder(model_path=str(folder))
    pixels = encoder.prepare({"image": str(grey_png)})
    assert pixels.shape == expected.shape == (3, 32, 32)
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)
    assert encoder(pixels[None]).shape == (1, 32)


def test_processor_settings_change_the_cache_key(tmp_path, grey_png):
    folder = _dinov2_folder(tmp_path / "a", crop=32)
    other = shutil.copytree(folder, tmp_path / "b")
    BitImageProcessor.from_pretrained(folder, crop_size={"height": 24, "width": 24}).save_pretrained(other)
    crop_32, crop_24 = FrozenImageEncoder(model_path=str(folder)), FrozenImageEncoder(model_path=str(other))
    assert crop_32.weights_sha256 == crop_24.weights_sha256  # the same weights: only the preprocessing differs
    assert crop_32.identity()["preprocessing"]["image_processor"]["crop_size"] == {"height": 32, "width": 32}
    keys = {EmbeddingCache(tmp_path / "cache", e.identity()).space_key for e in (crop_32, crop_24)}
    assert len(keys) == 2


def test_config_built_model_keeps_its_own_preprocessing(tiny_vit_config):
    encoder = FrozenImageEncoder(model_config=tiny_vit_config, image_size=48, image_mean=[0.1] * 3)
    assert encoder.processor is None
    assert encoder.identity()["preprocessing"] == {
        "loader": "LoadRadiographd(pydicom|PIL, MONOCHROME1 inverted, RGB reduced)",
        "scale": "minmax[0,1]",
        "size": 48,
        "resize": "bilinear+antialias",
        "mean": [0.1, 0.1, 0.1],
        "std": [0.5, 0.5, 0.5],
    }


@pytest.fixture
def tiny_vit_config():
    return {"model_type": "vit", "image_size": 32, **TINY}


def test_bundle_size_or_mean_with_a_processor_folder_is_refused(tmp_path):
    folder = _dinov2_folder(tmp_path / "model")
    with pytest.raises(ValueError, match=r"preprocessor_config.json.*image_size would be ignored"):
        FrozenImageEncoder(model_path=str(folder), image_size=64)


def test_fallback_without_a_processor_and_output_size(tmp_path, grey_png):
    folder = tmp_path / "no_processor"
    ViTModel(ViTConfig(image_size=32, **TINY)).save_pretrained(folder)
    transform = ImageProcessord(keys="image", model_path=folder, fallback=lambda d: {**d, "image": "fallback"})
    assert transform.processor is None and transform({"image": 1})["image"] == "fallback"
    assert image_processor_output_size(None, 224) == (224, 224)
    assert image_processor_output_size(load_image_processor(_dinov2_folder(tmp_path / "m", crop=24)), 224) == (24, 24)


def _with_remote_code(folder, processor_type):
    """Point the folder's processor at a module that leaves a marker file when it is imported."""
    marker = folder / "remote_code_ran"
    (folder / "evil_processor.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nEvilProcessor = None\n")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["auto_map"] = {"AutoImageProcessor": "evil_processor.EvilProcessor"}
    config["image_processor_type"] = processor_type
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return marker


def test_auto_map_code_is_never_run(tmp_path, monkeypatch):
    folder = _dinov2_folder(tmp_path / "model")
    marker = _with_remote_code(folder, "BitImageProcessor")
    calls = []
    original = AutoImageProcessor.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(image_processor_module.AutoImageProcessor, "from_pretrained", spy)
    processor = load_image_processor(folder)
    assert calls == [{"local_files_only": True, "trust_remote_code": False}]
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert not marker.exists()


def test_processor_that_only_exists_as_remote_code_is_a_named_error(tmp_path):
    folder = _dinov2_folder(tmp_path / "model")
    marker = _with_remote_code(folder, "EvilProcessor")
    with pytest.raises(ValueError, match=r"image_model_path=.*remote code is never executed"):
        load_image_processor(folder, key="image_model_path")
    assert not marker.exists()


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_report_gen_configs_use_the_vision_folders_processor(repo_root, tmp_path, grey_png, config):
    """report_gen with real vision weights: the folder's processor, and the visual token count of its output size."""
    from monai.bundle import ConfigParser

    from common.vision.hf_vision_encoder import HFVisionEncoder

    def parsed(image_model_path):
        parser = ConfigParser()
        parser.read_config(
            [repo_root / "bundles/report_gen/configs" / config, repo_root / "bundles/report_gen/configs/demo.json"]
        )
        parser["bundle_root"] = str(tmp_path)
        parser["image_model_path"] = image_model_path
        return parser.get_parsed_content("preprocessing")

    folder = _dinov2_folder(tmp_path / "dinov2", crop=24)
    expected = AutoImageProcessor.from_pretrained(folder, local_files_only=True)(
        images=Image.open(grey_png).convert("RGB"), return_tensors="pt"
    )["pixel_values"]
    preprocessing = parsed(str(folder))
    pixels = preprocessing({"image": str(grey_png)})["image"]
    torch.testing.assert_close(pixels[None], expected, atol=1e-5, rtol=0)
    assert preprocessing.transforms[1].spatial_size(64) == (24, 24)
    assert HFVisionEncoder(folder, drop_cls_token=True)(pixels[None]).shape == (1, 9, 32)  # (24 / 8) ** 2 patches

    demo = parsed("")({"image": str(grey_png)})["image"]  # no folder: the bundle's own resize and normalisation
    assert tuple(demo.shape) == (1, 64, 64)


def test_cleft_keeps_its_paper_preprocessing_and_names_the_folders_processor(tmp_path, caplog):
    from common.vision.dinov2_encoder import DINOv2Encoder

    folder = _dinov2_folder(tmp_path / "dinov2")
    with caplog.at_level("INFO", logger="common.vision.dinov2_encoder"):
        encoder = DINOv2Encoder.from_config(folder, key="image_model_path")
    assert "image processor" in caplog.text and "'crop_size': {'height': 32, 'width': 32}" in caplog.text
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    _with_remote_code(folder, "EvilProcessor")  # a processor that cannot be built never blocks loading the weights
    assert DINOv2Encoder.from_config(folder).hidden_size == 32
