"""Tiny CLEFT configs and texts shared by the cleft tests (imported as a module; pytest puts this folder on sys.path)."""

from __future__ import annotations



CLASS_NAMES = ["atelectasis", "edema", "cardiomegaly", "pleural effusion", "consolidation"]
TEMPLATE = "this is a chest x ray of a patient with "
CORPUS = [TEMPLATE + name for name in CLASS_NAMES] + ["no finding", "a long report about the heart and the lungs"]


def tiny_gpt2_config(vocab_size: int) -> dict:
    return {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128,
            "vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0, "attn_pdrop": 0.0,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0}


def tiny_dinov2_config() -> dict:
    return {"model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "image_size": 28, "patch_size": 14,
            "num_register_tokens": 4}
