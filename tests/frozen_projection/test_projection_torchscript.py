"""frozen_projection's ``models/model.pt`` is the network's own state dict, and the model zoo's TorchScript check
(MONAI's ``ckpt_export`` on ``inference.json``'s ``traceable_network_def``, no ``key_in_ckpt``) exports it to a
module whose outputs equal eager ones; the whole dict-input model scripts too."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_runner import REPO_ROOT
from ignite.engine import Engine
from monai.bundle import ckpt_export
from monai.handlers import CheckpointLoader

from common.engines.checkpoint import load_trained_weights, read_checkpoint_metadata, save_model_pt, trained_state_dict
from common.methods.projection.heads import DualProjectionModel

CONFIGS = REPO_ROOT / "bundles" / "frozen_projection" / "configs"


def _trained(bundle_root) -> DualProjectionModel:
    """A demo-sized model (the paper's objective: fixed logit scale) and its models/model.pt, as training writes it."""
    torch.manual_seed(0)
    model = DualProjectionModel(image_dim=96, text_dim=384, hidden_dim=32, out_dim=64, learnable_logit_scale=False)
    record = {"network": model.config, "base_model_fingerprint": "f" * 64, "base_model_name_or_path": "/home/a/vit"}
    save_model_pt(trained_state_dict(model), bundle_root / "models" / "model.pt", record)
    return model.eval()


def test_model_pt_loads_strictly_with_monai_checkpoint_loader_and_keeps_its_record(tmp_path):
    model = _trained(tmp_path)
    model_pt = tmp_path / "models" / "model.pt"
    assert torch.load(model_pt, weights_only=True).keys() == model.state_dict().keys()
    torch.manual_seed(1)
    fresh = DualProjectionModel(**model.config).eval()
    CheckpointLoader(str(model_pt), load_dict={"model": fresh}, strict=True)(Engine(lambda e, b: None))
    batch = {"image_embedding": torch.randn(3, 96), "text_embedding": torch.randn(3, 384)}
    torch.testing.assert_close(fresh(batch), model(batch), rtol=0, atol=0)
    record = read_checkpoint_metadata(model_pt)
    assert json.loads(record["network"]) == model.config and record["base_model_name_or_path"] == "vit"
    with pytest.raises(ValueError, match="belongs to base model vit"):
        load_trained_weights(fresh, model_pt, "0" * 64)


def test_zoo_ckpt_export_of_the_image_side_equals_eager(tmp_path):
    model = _trained(tmp_path)
    exported = tmp_path / "models" / "verify_model.ts"
    ckpt_export(  # as the zoo's verify_torchscript calls it, with its net id for this bundle
        net_id="traceable_network_def",
        filepath=str(exported),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(tmp_path),
    )
    scripted = torch.jit.load(str(exported))
    with torch.no_grad():
        for rows in (1, 5):
            x = torch.randn(rows, 96)
            torch.testing.assert_close(scripted(x), model.image_head(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.jit.Error, match=r"expects embeddings of shape \(B, 96\), got \[2, 95\]"):
        scripted(torch.randn(2, 95))


def test_dual_model_scripts_with_dict_input_to_eager_outputs(tmp_path):
    model = _trained(tmp_path)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for batch in (
            {"image_embedding": torch.randn(4, 96), "text_embedding": torch.randn(4, 384)},
            {"text_embedding": torch.randn(2, 384)},
        ):
            expected, got = model(batch), scripted(batch)
            assert got.keys() == expected.keys()
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
