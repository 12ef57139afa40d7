"""CTCLIP (CTViT + BERT + projections) reproduces the official CT-CLIP outputs on the tiny configuration."""

from __future__ import annotations

import torch

from common.losses.clip_loss import ClipLoss
from common.methods.ctclip.model import zero_shot_probabilities

TOL = {"rtol": 1e-5, "atol": 1e-5}


def test_latents_logits_and_loss_match(tiny_ctclip, expected, reference_volume):
    batch = {
        "image": reference_volume,
        "input_ids": expected["input.text_input_ids"],
        "attention_mask": expected["input.text_attention_mask"],
    }
    with torch.no_grad():
        out = tiny_ctclip(batch)
        pooled = tiny_ctclip.pooled_image_features(reference_volume)
        hidden = tiny_ctclip.text_transformer(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    torch.testing.assert_close(pooled, expected["ctclip.image_pooled_flat"], **TOL)
    torch.testing.assert_close(hidden, expected["ctclip.text_last_hidden_state"], **TOL)
    torch.testing.assert_close(out["image_latents"], expected["ctclip.image_latents"], **TOL)
    torch.testing.assert_close(out["text_latents"], expected["ctclip.text_latents"], **TOL)
    torch.testing.assert_close(out["logit_scale"].reshape(1), expected["ctclip.temperature_exp"], **TOL)
    logits = out["logit_scale"] * out["text_latents"] @ out["image_latents"].t()
    torch.testing.assert_close(logits, expected["ctclip.logits_matrix"], **TOL)
    torch.testing.assert_close(logits.diagonal(), expected["ctclip.logits_paired"], **TOL)
    loss = ClipLoss(normalize=False)(out["image_latents"], out["text_latents"], out["logit_scale"])
    torch.testing.assert_close(loss.reshape(1), expected["ctclip.loss"], **TOL)


def test_zero_shot_softmax_matches(tiny_ctclip, expected, reference_volume):
    batch = {
        "image": reference_volume[:1],
        "prompt_input_ids": expected["input.zeroshot_input_ids"],
        "prompt_attention_mask": expected["input.zeroshot_attention_mask"],
    }
    with torch.no_grad():
        out = tiny_ctclip(batch)
    torch.testing.assert_close(out["prompt_latents"], expected["ctclip.zeroshot_text_latents"], **TOL)
    torch.testing.assert_close(out["image_latents"], expected["ctclip.zeroshot_image_latents"], **TOL)
    p_present = zero_shot_probabilities(out["image_latents"], out["prompt_latents"], out["logit_scale"])
    torch.testing.assert_close(p_present.reshape(1), expected["ctclip.zeroshot_softmax"][:1], **TOL)
