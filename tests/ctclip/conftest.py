"""Fixtures of the ctclip tests: the official reference vectors and the tiny CT-CLIP built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.methods.ctclip.model import CTCLIP


@pytest.fixture(scope="session")
def reference_dir(reference_set) -> Path:
    """``$CTCLIP_REFERENCE_DIR`` (another reference set), else ``../shared/data/ctclip_reference``."""
    return reference_set(
        "CTCLIP_REFERENCE_DIR", "ctclip_reference", "ctclip_tiny_expected.safetensors", "CT-CLIP reference vectors"
    )


@pytest.fixture(scope="session")
def reference_config(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "ctclip_tiny_config.json").read_text())


@pytest.fixture(scope="session")
def expected(reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(reference_dir / "ctclip_tiny_expected.safetensors"))


@pytest.fixture(scope="session")
def reference_volume(reference_dir: Path) -> torch.Tensor:
    return load_file(str(reference_dir / "ctvit_tiny_input.safetensors"))["volume"]


@pytest.fixture()
def tiny_ctclip(reference_dir: Path, reference_config: dict) -> CTCLIP:
    """The tiny official CT-CLIP with its reference weights, in eval mode."""
    return CTCLIP.from_config(
        reference_config["ctvit_config"],
        reference_config["bert_config"],
        dim_latent=reference_config["ctclip_config"]["dim_latent"],
        pretrained_path=str(reference_dir / "ctclip_tiny.safetensors"),
        bert_attn_implementation="eager",
    ).eval()
