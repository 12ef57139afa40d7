"""Fixtures of the ctclip tests: the official reference vectors and the tiny CT-CLIP built from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.methods.ctclip.model import CTCLIP


@pytest.fixture(scope="session")
def reference_dir(request, require_fixture) -> Path:
    """``$CTCLIP_REFERENCE_DIR`` (another reference set), else ``../shared/data/ctclip_reference``."""
    explicit = os.environ.get("CTCLIP_REFERENCE_DIR")
    folder = Path(explicit) if explicit else request.getfixturevalue("shared_data_dir") / "ctclip_reference"
    if explicit and not (folder / "ctclip_tiny_expected.safetensors").is_file():
        raise FileNotFoundError(f"CTCLIP_REFERENCE_DIR={explicit!r} holds no ctclip_tiny_expected.safetensors")
    require_fixture(folder / "ctclip_tiny_expected.safetensors", "CT-CLIP reference vectors")
    return folder


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
