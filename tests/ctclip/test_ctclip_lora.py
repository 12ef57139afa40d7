"""LoRA on CT-CLIP: only adapters train, the codebook stays bit-identical, adapters reload to identical outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ignite.engine import Engine
from transformers import BertConfig, BertModel

from common.methods.ctclip.model import CTCLIP, CXR_BERT_CONFIG
from common.methods.ctclip.training import CTCLIPLoss, apply_ctclip_lora
from common.peft.lora import load_lora_folder, lora_state_dict, parameter_summary, save_lora_folder
from common.vision.ctvit import FULL_CTVIT_CONFIG, CTViT


def _batch(expected, volume):
    return {
        "image": volume,
        "input_ids": expected["input.text_input_ids"],
        "attention_mask": expected["input.text_attention_mask"],
    }


def test_paper_parameter_count_on_full_size_meta_model():
    with torch.device("meta"):
        model = CTCLIP(CTViT(**FULL_CTVIT_CONFIG), BertModel(BertConfig(**CXR_BERT_CONFIG)), 294912, 768, 512)
        peft_model = apply_ctclip_lora(model, rank=24, alpha=48)
    summary = parameter_summary(peft_model)
    assert summary.trainable == 1_671_168  # "1.67M" of MedCT-VLM
    assert summary.total == 438_148_761 + 1_671_168
    assert round(summary.percent, 2) == 0.38


def test_one_step_changes_only_adapters(tiny_ctclip, expected, reference_volume):
    model = apply_ctclip_lora(tiny_ctclip, rank=4, alpha=8)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    # LoRA B starts at zero: take two steps so both A and B move
    for _ in range(2):
        optimizer.zero_grad()
        loss = CTCLIPLoss("clip")(model(_batch(expected, reference_volume)))
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)
    assert any("visual_transformer" in k for k in changed), "no vision adapter moved: straight-through broken"
    assert any("text_transformer" in k for k in changed)
    for key in ("embed", "cluster_size", "initted"):
        full = f"base_model.model.visual_transformer.vq._codebook.{key}"
        assert torch.equal(before[full], after[full])


def test_adapters_reload_to_identical_outputs(
    tmp_path, tiny_ctclip, reference_dir, reference_config, expected, reference_volume
):
    model = apply_ctclip_lora(copy.deepcopy(tiny_ctclip), rank=4, alpha=8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # non-zero adapters, so the test can fail
    model.eval()
    with torch.no_grad():
        reference = model(_batch(expected, reference_volume))
        base = tiny_ctclip(_batch(expected, reference_volume))
    assert not torch.allclose(reference["image_latents"], base["image_latents"])
    save_lora_folder(model, tmp_path / "adapters")
    size = sum(f.stat().st_size for f in (tmp_path / "adapters").iterdir())
    assert size < 200_000
    fresh = CTCLIP.from_config(
        reference_config["ctvit_config"],
        reference_config["bert_config"],
        dim_latent=16,
        pretrained_path=str(reference_dir / "ctclip_tiny.safetensors"),
        bert_attn_implementation="eager",
    )
    reloaded = load_lora_folder(fresh, tmp_path / "adapters").eval()
    with torch.no_grad():
        again = reloaded(_batch(expected, reference_volume))
    for key in ("image_latents", "text_latents"):
        assert torch.equal(again[key], reference[key])
    assert set(lora_state_dict(reloaded)) == set(lora_state_dict(model))


def test_unknown_target_is_named(tiny_ctclip):
    with pytest.raises(ValueError, match="lora_targets_vision"):
        apply_ctclip_lora(tiny_ctclip, targets_vision=["to_qkv"])


def test_merged_export_reproduces_adapted_outputs(tmp_path, tiny_ctclip, reference_config, expected, reference_volume):
    from common.methods.ctclip.adapters import export_merged
    from common.weights.ctclip_checkpoint import load_ctclip_checkpoint

    model = apply_ctclip_lora(copy.deepcopy(tiny_ctclip), rank=4, alpha=8).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        adapted = model(_batch(expected, reference_volume))
    path = export_merged(model, tmp_path / "merged.safetensors")
    plain = CTCLIP.from_config(
        reference_config["ctvit_config"],
        reference_config["bert_config"],
        dim_latent=16,
        bert_attn_implementation="eager",
    )
    load_ctclip_checkpoint(plain, path)
    with torch.no_grad():
        merged = plain.eval()(_batch(expected, reference_volume))
    torch.testing.assert_close(merged["text_latents"], adapted["text_latents"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged["image_latents"], adapted["image_latents"], rtol=1e-5, atol=1e-5)


def test_text_encoder_from_a_local_folder(tmp_path, reference_config):
    bert = BertModel(BertConfig(**reference_config["bert_config"]))
    bert.save_pretrained(tmp_path / "bert")
    model = CTCLIP.from_config(reference_config["ctvit_config"], text_model_path=str(tmp_path / "bert"), dim_latent=16)
    for name, value in bert.state_dict().items():
        assert torch.equal(model.text_transformer.state_dict()[name], value)
    with pytest.raises(FileNotFoundError, match="text_model_path"):
        CTCLIP.from_config(reference_config["ctvit_config"], text_model_path=str(tmp_path / "absent"), dim_latent=16)


def test_saved_adapter_folder_names_its_base_and_loads_with_plain_peft(
    tmp_path, tiny_ctclip, reference_dir, reference_config, expected, reference_volume
):
    from peft import PeftModel

    from common.engines.checkpoint import EngineCheckpoint
    from common.engines.save_handler import TrainedWeightsSaveHandler
    from common.methods.ctclip.adapters import ctclip_fingerprint, load_adapters

    pretrained = str(reference_dir / "ctclip_tiny.safetensors")
    model = apply_ctclip_lora(copy.deepcopy(tiny_ctclip), rank=4, alpha=8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    handler = TrainedWeightsSaveHandler(tmp_path, ctclip_fingerprint(model), pretrained, to_save={"adapters": model})
    assert ctclip_fingerprint(model) == ctclip_fingerprint(tiny_ctclip)  # LoRA in or not: the same base
    EngineCheckpoint({"adapters": model}, handler, filename_pattern="adapters")(Engine(lambda e, b: None))
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == pretrained
    with torch.no_grad():
        reference = model.eval()(_batch(expected, reference_volume))
        reloaded = PeftModel.from_pretrained(copy.deepcopy(tiny_ctclip), str(tmp_path / "adapters")).eval()
        again = reloaded(_batch(expected, reference_volume))
        ours = load_adapters(copy.deepcopy(tiny_ctclip), tmp_path, pretrained).eval()(
            _batch(expected, reference_volume)
        )
    for key in ("image_latents", "text_latents"):
        assert torch.equal(again[key], reference[key]) and torch.equal(ours[key], reference[key])
    random_base = CTCLIP.from_config(
        reference_config["ctvit_config"], reference_config["bert_config"], dim_latent=16, init_seed=0
    )
    with pytest.raises(ValueError, match=rf"belongs to base model {pretrained} .* given base model medvlm-base:"):
        load_adapters(random_base, tmp_path)
