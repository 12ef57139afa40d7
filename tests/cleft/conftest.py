"""Fixtures of tiny CLEFT encoders (random weights, fixed seeds)."""

from __future__ import annotations

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
def cleft_reference_dir(reference_set) -> Path:
    """``$CLEFT_REFERENCE_DIR`` (another reference set), else ``../shared/data/cleft_reference``."""
    return reference_set(
        "CLEFT_REFERENCE_DIR", "cleft_reference", "cleft_tiny_expected.safetensors", "CLEFT reference vectors"
    )
