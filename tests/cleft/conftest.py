"""Fixtures of tiny CLEFT encoders (random weights, fixed seeds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cleft_tiny import CORPUS, tiny_dinov2_config, tiny_gpt2_config

from common.text.causal_lm_encoder import CausalLMEncoder, train_bpe_tokenizer
from common.vision.dinov2_encoder import DINOv2Encoder


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture
def text_encoder(tokenizer):
    torch.manual_seed(0)
    return CausalLMEncoder.from_config(
        config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, max_length=16, lora_dropout=0.0
    )


@pytest.fixture
def image_encoder():
    torch.manual_seed(0)
    return DINOv2Encoder.from_config(config=tiny_dinov2_config())


@pytest.fixture(scope="session")
def cleft_reference_dir(request, require_fixture) -> Path:
    """The official code's CLEFT reference set: ``$CLEFT_REFERENCE_DIR``, else ``../shared/data/cleft_reference``."""
    explicit = os.environ.get("CLEFT_REFERENCE_DIR")
    folder = Path(explicit) if explicit else request.getfixturevalue("shared_data_dir") / "cleft_reference"
    if explicit and not (folder / "cleft_tiny_expected.safetensors").is_file():
        raise FileNotFoundError(f"CLEFT_REFERENCE_DIR={explicit!r} holds no cleft_tiny_expected.safetensors")
    require_fixture(folder / "cleft_tiny_expected.safetensors", "CLEFT reference vectors")
    return folder
