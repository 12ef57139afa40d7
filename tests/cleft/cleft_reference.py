"""Our tiny CLEFT rebuilt from a reference set of the official code (its own config, tokenizer and tolerances).

Everything here is read from the reference folder (``cleft_tiny_config.json``, ``tokenizer/``, ``README.md``), so
the same tests run unchanged on another reference set (``CLEFT_REFERENCE_DIR``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file


@cache
def reference_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "cleft_tiny_config.json").read_text())


def tolerances(folder: Path) -> dict[str, float]:
    """The README's "Recommended:" tolerances: ``features`` (rtol = atol), ``logits`` (atol), ``hidden`` (atol)."""
    text = (Path(folder) / "README.md").read_text()
    line = next((ln for ln in text.splitlines() if ln.lstrip("- ").startswith("Recommended:")), None)
    if line is None:
        raise ValueError(f"{folder}/README.md has no 'Recommended:' tolerance line")
    number = r"([0-9.]+e-?[0-9]+)"
    found = {
        "features": re.search(rf"rtol=atol={number}` for features", line),
        "logits": re.search(rf"atol={number}` for logits", line),
        "hidden": re.search(rf"atol={number}` for the `\*\.hidden`", line),
    }
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise ValueError(f"cannot read the {missing} tolerance(s) from {folder}/README.md: {line!r}")
    return {k: float(v.group(1)) for k, v in found.items()}


def reference_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(folder) / "tokenizer"), local_files_only=True)
    tokenizer.pad_token = tokenizer.eos_token  # as the official get_tokenizer()
    return tokenizer


def dinov2_config(config: dict) -> dict:
    """``Dinov2WithRegistersConfig`` fields of the official vendored ViT (hub keyword arguments + sizes)."""
    vit, hub = config["vit"]["sizes"], config["vit"]["hub_kwargs"]
    return {
        "model_type": "dinov2_with_registers",
        "hidden_size": vit["embed_dim"],
        "num_hidden_layers": vit["depth"],
        "num_attention_heads": vit["num_heads"],
        "mlp_ratio": vit["mlp_ratio"],
        "image_size": hub["img_size"],
        "patch_size": hub["patch_size"],
        "num_register_tokens": hub["num_register_tokens"],
        "layerscale_value": hub["init_values"],
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "qkv_bias": True,
    }


def tiny_official_cleft(folder: Path, official_unpadded_eos_quirk: bool):
    """Our CLEFT at the reference's tiny configuration, with the official stage-1 weights loaded, in eval mode."""
    from common.methods.cleft.model import CLEFT
    from common.text.causal_lm_encoder import CausalLMEncoder
    from common.vision.dinov2_encoder import DINOv2Encoder
    from common.weights.cleft_checkpoint import load_official_cleft

    config = reference_config(folder)
    lora = config["lora_config_as_built"]
    image_encoder = DINOv2Encoder.from_config(config=dinov2_config(config))
    text_encoder = CausalLMEncoder.from_config(
        config={"model_type": "gpt2", **config["gpt2_config"]},
        tokenizer=reference_tokenizer(folder),
        max_length=config["max_words"],
        lora_rank=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        lora_target_modules=lora["target_modules"],
        official_unpadded_eos_quirk=official_unpadded_eos_quirk,
    )
    model = CLEFT(image_encoder, text_encoder, embed_dim=config["emb_dim"])
    return load_official_cleft(model, Path(folder) / "cleft_tiny_stage1.safetensors").eval()


def official_stage2_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The official stage-2 state dict under its own key names: stage-1 tensors renamed + the delta file."""
    config = reference_config(folder)
    stage1 = load_file(str(Path(folder) / "cleft_tiny_stage1.safetensors"))
    delta = load_file(str(Path(folder) / "cleft_tiny_stage2_delta.safetensors"))
    renamed = config["stage2_key_to_stage1_key"]
    state = {}
    for key, *_ in config["stage2_state_dict"]:
        source = renamed.get(key, key)
        if key in delta:
            state[key] = delta[key]
        elif source in stage1:  # the unused local_embed entries are not in the file
            state[key] = stage1[source]
    return state


def tiny_official_stage2(folder: Path, official_unpadded_eos_quirk: bool):
    """Our prompt classifier (context of the reference length) with the official stage-2 weights loaded."""
    from common.methods.cleft.model import CLEFTClassifier
    from common.peft.context_prompt import ContextPrompt
    from common.weights.cleft_checkpoint import load_official_cleft

    config = reference_config(folder)
    clip = tiny_official_cleft(folder, official_unpadded_eos_quirk)
    context = ContextPrompt(config["ctx_length"], clip.text_encoder.hidden_size)
    classifier = CLEFTClassifier(clip, config["class_names"], context=context)
    return load_official_cleft(classifier, official_stage2_state_dict(folder)).eval()
