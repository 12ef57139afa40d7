"""The full-size model is key- and shape-compatible with CT-CLIP_v2.pt; the loader is strict and code-free."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from common.methods.ctclip.model import CTCLIP, CXR_BERT_CONFIG
from common.vision.ctvit import FULL_CTVIT_CONFIG, CTViT
from common.weights.ctclip_checkpoint import load_ctclip_checkpoint, read_state_dict

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _full_model_on_meta() -> CTCLIP:
    with torch.device("meta"):
        visual = CTViT(**FULL_CTVIT_CONFIG)
        text = BertModel(BertConfig(**CXR_BERT_CONFIG))
        return CTCLIP(visual, text, dim_image=24 * 24 * 512, dim_text=768, dim_latent=512)


@pytest.fixture(scope="module")
def official_keys(shared_data_dir, require_fixture):
    path = require_fixture(shared_data_dir / "ctclip_reference" / "full_state_dict_keys.json", "CT-CLIP_v2 key list")
    return json.loads(path.read_text())


def _official_meta_state_dict(official_keys) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=_DTYPES[dtype], device="meta") for k, shape, dtype in official_keys["keys"]}


def test_full_size_keys_and_shapes_equal_official(official_keys):
    model = _full_model_on_meta()
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    theirs = {k: (shape, dtype) for k, shape, dtype in official_keys["keys"]}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == official_keys["total_parameters"] == 438_148_761


def test_strict_load_drops_only_position_ids(official_keys):
    model = _full_model_on_meta()
    state_dict = _official_meta_state_dict(official_keys)
    state_dict["text_transformer.embeddings.position_ids"] = torch.empty(1, 512, dtype=torch.int64, device="meta")
    load_ctclip_checkpoint(model, state_dict, assign=True)


def test_other_missing_or_unexpected_keys_are_listed(official_keys):
    model = _full_model_on_meta()
    state_dict = _official_meta_state_dict(official_keys)
    state_dict.pop("visual_transformer.vq._codebook.embed")
    state_dict["to_visual_latent.bias"] = torch.empty(512, device="meta")
    with pytest.raises(ValueError) as info:
        load_ctclip_checkpoint(model, state_dict, assign=True)
    assert "visual_transformer.vq._codebook.embed" in str(info.value)
    assert "to_visual_latent.bias" in str(info.value)


def test_shape_mismatch_is_listed(official_keys):
    model = _full_model_on_meta()
    state_dict = _official_meta_state_dict(official_keys)
    state_dict["temperature"] = torch.empty(1, device="meta")
    with pytest.raises(ValueError, match="temperature: checkpoint"):
        load_ctclip_checkpoint(model, state_dict, assign=True)


def test_pt_file_round_trip_with_weights_only(tmp_path, reference_dir, reference_config, expected, reference_volume):
    """A torch.save'd checkpoint with the legacy position_ids entry loads strictly and reproduces the outputs."""
    state_dict = read_state_dict(reference_dir / "ctclip_tiny.safetensors")
    state_dict["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]
    path = tmp_path / "CT-CLIP_tiny.pt"
    torch.save(state_dict, path)
    model = CTCLIP.from_config(
        reference_config["ctvit_config"], reference_config["bert_config"], dim_latent=16, pretrained_path=str(path)
    ).eval()
    with torch.no_grad():
        latents = model.encode_volume(reference_volume)
    torch.testing.assert_close(latents, expected["ctclip.image_latents"], rtol=1e-5, atol=1e-5)
    assert not hasattr(model, "to_visual_latent_extra")  # dropped after loading


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="CT-CLIP checkpoint not found"):
        read_state_dict(tmp_path / "absent.pt")
    bad = tmp_path / "list.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(ValueError, match="flat state dict"):
        read_state_dict(bad)
