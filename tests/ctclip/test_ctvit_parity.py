"""CTViT reproduces the official CT-CLIP encoder on the tiny reference configuration."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file

from common.vision.ctvit import CTViT


def _tiny_ctvit(reference_dir, reference_config) -> CTViT:
    model = CTViT(**reference_config["ctvit_config"])
    model.load_state_dict(load_file(str(reference_dir / "ctvit_tiny.safetensors")), strict=True)
    return model.eval()


def test_intermediates_match_reference(reference_dir, reference_config, expected, reference_volume):
    model = _tiny_ctvit(reference_dir, reference_config)
    with torch.no_grad():
        patches = model.to_patch_emb(reference_volume)
        torch.testing.assert_close(patches, expected["ctvit.patch_emb"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model.spatial_rel_pos_bias(4, 4), expected["ctvit.spatial_rel_pos_bias"], rtol=1e-5, atol=1e-5
        )
        features = model.encode(patches)
        b, t, h, w, d = features.shape
        assert (t, h, w) == tuple(reference_config["token_grid_t_h_w"])
        torch.testing.assert_close(features.reshape(b, -1, d), expected["ctvit.vq_input"], rtol=0, atol=1e-4)
        _, _, margin = model.quantize(features)
        torch.testing.assert_close(margin.reshape(b, -1), expected["ctvit.vq_top2_margin"], rtol=0, atol=1e-4)


def test_codebook_ids_exact_and_tokens_match(reference_dir, reference_config, expected, reference_volume):
    model = _tiny_ctvit(reference_dir, reference_config)
    with torch.no_grad():
        tokens, ids = model(reference_volume, return_codebook_ids=True)
    assert torch.equal(ids, expected["ctvit.codebook_ids"])
    torch.testing.assert_close(tokens, expected["ctvit.encoded_tokens"], rtol=1e-5, atol=1e-5)


def test_official_train_mode_ema_is_reproduced_when_asked(reference_dir, reference_config, expected, reference_volume):
    model = _tiny_ctvit(reference_dir, reference_config)
    model.train()
    model.vq.ema_update = True
    with torch.no_grad():
        tokens = model(reference_volume)
    torch.testing.assert_close(tokens, expected["train_mode.encoded_tokens"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.vq._codebook.embed, expected["train_mode.codebook_embed_after"], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        model.vq._codebook.cluster_size, expected["train_mode.cluster_size_after"], rtol=1e-5, atol=1e-5
    )


def test_frozen_vq_keeps_codebook_and_passes_gradient(reference_dir, reference_config, reference_volume):
    model = _tiny_ctvit(reference_dir, reference_config)
    codebook_before = copy.deepcopy(model.vq._codebook.state_dict())
    model.train()  # default ema_update=False: train mode must not touch the codebook
    tokens = model(reference_volume)
    tokens.pow(2).mean().backward()
    for name, value in model.vq._codebook.state_dict().items():
        assert torch.equal(value, codebook_before[name]), name
    grad = model.enc_spatial_transformer.layers[0][1].to_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # straight-through reached the encoder


def test_wrong_input_shape_is_a_named_error(reference_dir, reference_config):
    import pytest

    model = _tiny_ctvit(reference_dir, reference_config)
    with pytest.raises(ValueError, match="5-D"):
        model(torch.zeros(1, 24, 32, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.zeros(1, 1, 23, 32, 32))
