"""Tiny CLEFT configs and texts shared by the cleft tests (imported as a module; pytest puts this folder on
sys.path)."""

from __future__ import annotations

CLASS_NAMES = ["atelectasis", "edema", "cardiomegaly", "pleural effusion", "consolidation"]
TEMPLATE = "this is a chest x ray of a patient with "
CORPUS = [TEMPLATE + name for name in CLASS_NAMES] + ["no finding", "a long report about the heart and the lungs"]


def tiny_gpt2_config(vocab_size: int) -> dict:
    return {
        "model_type": "gpt2",
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 128,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "attn_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
    }


def tiny_dinov2_config() -> dict:
    return {
        "model_type": "dinov2_with_registers",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 28,
        "patch_size": 14,
        "num_register_tokens": 4,
    }


def tiny_cleft(tokenizer, lora_dropout: float = 0.0, seed: int = 0, max_length: int = 32):
    """A tiny CLEFT (2-layer DINOv2 with registers at 28x28, 2-layer GPT-2 with LoRA) with fixed random weights."""
    import torch

    from common.methods.cleft.model import CLEFT
    from common.text.causal_lm_encoder import CausalLMEncoder
    from common.vision.dinov2_encoder import DINOv2Encoder

    torch.manual_seed(seed)
    image_encoder = DINOv2Encoder.from_config(config=tiny_dinov2_config())
    text_encoder = CausalLMEncoder.from_config(
        config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, max_length=max_length, lora_dropout=lora_dropout
    )
    model = CLEFT(image_encoder, text_encoder, embed_dim=16)
    with torch.no_grad():  # non-zero LoRA B so that LoRA A receives gradient from the first step
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    return model
