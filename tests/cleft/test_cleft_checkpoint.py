"""CLEFT checkpoints name their base and refuse another; the text LoRA folder loads with plain PEFT; the merged
export gives the adapter model's embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from cleft_tiny import CLASS_NAMES, TEMPLATE, tiny_cleft, tiny_dinov2_config, tiny_gpt2_config
from ignite.engine import Engine
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

from common.engines.checkpoint import EngineCheckpoint, TrainedWeights
from common.engines.save_handler import TrainedWeightsSaveHandler
from common.methods.cleft.checkpoint import cleft_fingerprint, export_text_lora, load_cleft_checkpoint
from common.methods.cleft.export import export_merged
from common.methods.cleft.model import CLEFT
from common.text.causal_lm_encoder import CausalLMEncoder
from common.vision.dinov2_encoder import DINOv2Encoder
from common.weights.hf_loading import load_or_build_model


def _inputs(model, n: int = 4) -> dict:
    torch.manual_seed(1)
    tokens = model.text_encoder.tokenize([TEMPLATE + c for c in CLASS_NAMES[:n]])
    return {"image": torch.randn(n, 3, 28, 28), **tokens}


def _save(model, folder) -> None:
    to_save = {"model": TrainedWeights(model)}
    handler = TrainedWeightsSaveHandler(folder, cleft_fingerprint(model), record={"method": "CLEFT stage 1"})
    EngineCheckpoint(to_save, handler, filename_pattern="model.safetensors")(Engine(lambda e, b: None))


@pytest.fixture()
def trained(tokenizer, tmp_path):
    model = tiny_cleft(tokenizer, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    _save(model, tmp_path)
    return model.eval()


def test_checkpoint_loads_on_its_base_and_refuses_another(tokenizer, tmp_path, trained):
    fresh = load_cleft_checkpoint(tiny_cleft(tokenizer, seed=0), tmp_path / "model.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(fresh(_inputs(fresh))["text_features"], trained(_inputs(trained))["text_features"])
    other = tiny_cleft(tokenizer, seed=0)
    with torch.no_grad():  # other pretrained LM weights (the random base is seeded, so it is the same otherwise)
        other.text_encoder.model.get_base_model().wte.weight.add_(1e-3)
    with pytest.raises(
        ValueError, match=r"model\.safetensors belongs to base model medvlm-base:\w+ .*given base model /x"
    ):
        load_cleft_checkpoint(other, tmp_path / "model.safetensors", "/x")


def test_text_lora_folder_names_its_base_and_loads_with_plain_peft(tokenizer, tmp_path, trained):
    folder = export_text_lora(tiny_cleft(tokenizer, seed=0), tmp_path / "model.safetensors", tmp_path / "lora")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].startswith("medvlm-base:")
    base = load_or_build_model(None, tiny_gpt2_config(len(tokenizer)), auto_class=AutoModel)  # the plain LM
    loaded = PeftModel.from_pretrained(base, str(folder)).eval()
    batch = trained.text_encoder.tokenize(["no finding"])
    with torch.no_grad():
        expected = trained.text_encoder.model(**batch).last_hidden_state
        torch.testing.assert_close(loaded(**batch).last_hidden_state, expected, rtol=0, atol=0)


def test_merged_export_gives_the_adapter_models_embeddings(tokenizer, tmp_path, trained):
    batch = _inputs(trained)
    with torch.no_grad():
        expected = trained(batch)
    network = load_cleft_checkpoint(tiny_cleft(tokenizer, seed=0), tmp_path / "model.safetensors")
    export_merged(network, tmp_path / "export", {"method": "CLEFT stage 1"})
    torch.manual_seed(0)
    plain = CLEFT(
        DINOv2Encoder.from_config(config=tiny_dinov2_config()),
        CausalLMEncoder.from_config(config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, use_lora=False),
        embed_dim=16,
    )
    plain.load_state_dict(load_file(str(tmp_path / "export" / "model.safetensors")), strict=True)
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        got = plain.eval()(batch)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
    from_folders = CLEFT(
        DINOv2Encoder.from_config(model_path=str(tmp_path / "export" / "image_model")),
        CausalLMEncoder.from_config(model_path=str(tmp_path / "export" / "text_model"), use_lora=False),
        embed_dim=16,
    )
    heads = {k: v for k, v in load_file(str(tmp_path / "export" / "model.safetensors")).items() if "projection" in k}
    from_folders.load_state_dict(heads, strict=False)
    with torch.no_grad():
        again = from_folders.eval()(batch)["text_features"]
    torch.testing.assert_close(again, expected["text_features"], rtol=1e-5, atol=1e-5)
