"""Tiny report generators built from configs (random weights) and a word-level tokenizer for the report tests."""

from __future__ import annotations

import pytest
import torch

from common.data.report_tokenization import ReportCollator, build_word_level_tokenizer
from common.methods.report_gen.model import ReportGenerator
from common.peft.soft_visual_prompt import PromptTemplate

REPORTS = [
    "the heart is normal in size . the lungs are clear .",
    "there is a large right pleural effusion .",
    "small nodule in the left upper lobe . no pneumothorax .",
    "the cardiac silhouette is enlarged . no focal consolidation .",
]
TEMPLATE = "findings of <image> chest x-ray :"
IMAGE_SIZE = 16
PATCH = 8


def tiny_generator(tokenizer, projector_type: str = "linear", seed: int = 0, **kwargs) -> ReportGenerator:
    torch.manual_seed(seed)
    vision_config = {
        "model_type": "vit",
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "num_channels": 1,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    llm_config = {
        "model_type": "gpt2",
        "vocab_size": len(tokenizer),
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return ReportGenerator.from_config(
        vision_config=vision_config, llm_config=llm_config, projector_type=projector_type, init_seed=seed, **kwargs
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_level_tokenizer(REPORTS + [TEMPLATE.replace("<image>", "")])


@pytest.fixture
def num_visual_tokens() -> int:
    return (IMAGE_SIZE // PATCH) ** 2 + 1  # patches + CLS


@pytest.fixture
def template(word_tokenizer, num_visual_tokens) -> PromptTemplate:
    return PromptTemplate.from_text(TEMPLATE, word_tokenizer, num_visual_tokens)


@pytest.fixture
def items():
    gen = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, generator=gen), "report": r, "id": f"study{i}"}
        for i, r in enumerate(REPORTS)
    ]


@pytest.fixture
def train_batch(word_tokenizer, template, items):
    return ReportCollator(word_tokenizer, template, text_max_length=32)(items)


@pytest.fixture
def prompt_batch(word_tokenizer, template, items):
    return ReportCollator(word_tokenizer, template, text_max_length=32, with_targets=False)(items)
