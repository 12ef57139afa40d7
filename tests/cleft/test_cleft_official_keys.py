"""Our full-size CLEFT (the bundle's train.json) against the official full-size state-dict key list.

Built on the meta device (no weights, no memory): DINOv2 ViT-B/14 with registers and the BioMedLM-sized GPT-2 with
the official LoRA, then every official key (``full_state_dict_keys.json`` of the reference set) must map onto
exactly one of our entries with the same shape, and every one of ours must be filled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cleft_reference import reference_tokenizer

from common.methods.cleft.model import CLEFT, CLEFTClassifier
from common.peft.context_prompt import ContextPrompt
from common.text.causal_lm_encoder import CausalLMEncoder
from common.vision.dinov2_encoder import DINOv2Encoder
from common.weights.cleft_checkpoint import dinov2_official_to_hf, map_official_state_dict, official_keys
from common.weights.hf_loading import build_config


@pytest.fixture(scope="module")
def full_keys(cleft_reference_dir: Path) -> dict:
    return json.loads((cleft_reference_dir / "full_state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def train_config(repo_root: Path) -> dict:
    return json.loads((repo_root / "bundles" / "cleft_cxr" / "configs" / "train.json").read_text())


def test_our_biomedlm_config_has_biomedlm_flags(train_config, full_keys):
    """scale_attn_by_inverse_layer_idx and the other BioMedLM flags: off, the same weights give other states."""
    ours = build_config(train_config["text_model_config"])
    official = full_keys["gpt2_config"]
    differ = {k: (getattr(ours, k, None), v) for k, v in official.items() if getattr(ours, k, None) != v}
    assert not differ, f"train.json text_model_config differs from BioMedLM's config (ours, official): {differ}"


@pytest.fixture(scope="module")
def full_size_cleft(train_config, cleft_reference_dir):
    lora_targets = train_config["lora_target_modules"]
    with torch.device("meta"):
        image_encoder = DINOv2Encoder.from_config(config=train_config["image_model_config"])
        text_encoder = CausalLMEncoder.from_config(
            config=train_config["text_model_config"],
            tokenizer=reference_tokenizer(cleft_reference_dir),
            max_length=train_config["text_max_length"],
            lora_rank=train_config["lora_rank"],
            lora_alpha=train_config["lora_alpha"],
            lora_dropout=train_config["lora_dropout"],
            lora_target_modules=lora_targets,
        )
        return CLEFT(image_encoder, text_encoder, embed_dim=train_config["embed_dim"])


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_full_size_state_dict_maps_one_to_one(full_size_cleft, full_keys, stage):
    model = full_size_cleft
    entries = full_keys[stage]["keys"]
    if stage == "stage2":
        prompt = next(shape for key, shape, *_ in entries if key.endswith("prompt_encoder.default.embedding.weight"))
        with torch.device("meta"):
            model = CLEFTClassifier(model, ["a", "b"], context=ContextPrompt(*prompt))
    official = official_keys(entries)
    assert len(official) == full_keys[stage]["num_entries"]
    target = model.state_dict()
    mapped, explained = map_official_state_dict(official, target, source=f"official {stage} key list")
    assert sorted(mapped) == sorted(target)  # every one of ours filled once, with the official shape
    assert all(".local_embed." in k or k.endswith("model.word_embeddings.weight") for k in explained), explained
    used = len(official) - len(explained)
    qkv = sum(1 for k in official if k.endswith(("attn.qkv.weight", "attn.qkv.bias")))
    assert len(mapped) == used + 2 * qkv  # one-to-one, except the fused qkv -> three of ours
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = full_keys[stage]["param_groups"]
    if stage == "stage1":  # ours trains what the official stage 1 trains, less the unused local heads / final norm
        expected = full_keys[stage]["params_trainable"] - groups["image_local_embed_unused"]["trainable"]
        expected -= groups["text_local_embed_unused"]["trainable"]
        frozen_unused = sum(
            t.numel() for k, t in target.items() if k.endswith(("mask_token", "layernorm.weight", "layernorm.bias"))
        )
        assert trainable == expected - frozen_unused


def test_dinov2_rules_reproduce_the_key_map(cleft_reference_dir, full_keys, full_size_cleft):
    """Our DINOv2 renaming equals transformers' conversion script (the reference key map), qkv rows included."""
    keymap = json.loads((cleft_reference_dir / "dinov2_official_to_hf_keymap.json").read_text())["keymap"]
    shapes = {k: shape for k, shape, *_ in full_keys["stage1"]["keys"]}
    ours = set(full_size_cleft.image_encoder.model.state_dict())
    got = {}
    for official_key in {row[0] for row in keymap}:
        name = official_key[len("img_encoder_q.model.") :]
        for names, rows in dinov2_official_to_hf(name):
            target = next(n for n in names if n in ours)
            third = shapes[official_key][0] // 3
            got[(official_key, target)] = None if rows is None else [rows.start * third, (rows.start + 1) * third]
    assert got == {(k, t5): rows for k, _, t5, rows in keymap}
