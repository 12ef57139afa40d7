"""EOS pooling of the causal-LM text encoder: padded, unpadded, truncated, prompt-prefixed; LoRA; checkpointing."""

from __future__ import annotations

import pytest
import torch
from cleft_tiny import CORPUS, tiny_gpt2_config

from common.text.causal_lm_encoder import CausalLMEncoder, default_lora_targets


def _reference_last_state(encoder: CausalLMEncoder, ids: list[int]) -> torch.Tensor:
    """The LM's last hidden state of one unpadded sequence, computed independently of the pooling code."""
    out = encoder.model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state
    return out[0, -1]


def test_eos_is_appended_and_read_unpadded(text_encoder):
    text_encoder.eval()
    batch = text_encoder.tokenize([CORPUS[0]])
    ids = batch["input_ids"][0].tolist()
    assert ids[-1] == text_encoder.tokenizer.eos_token_id
    assert batch["attention_mask"].all()
    with torch.no_grad():
        pooled = text_encoder(**batch)[0]
        ref = _reference_last_state(text_encoder, ids)
    torch.testing.assert_close(pooled, ref, rtol=0, atol=1e-6)


def test_padded_caption_reads_its_own_eos(text_encoder):
    text_encoder.eval()
    texts = ["edema", CORPUS[2]]
    batch = text_encoder.tokenize(texts)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # the first is padded
    with torch.no_grad():
        pooled = text_encoder(**batch)
        alone = text_encoder(**text_encoder.tokenize(["edema"]))
        pad_state = text_encoder.model(**batch, use_cache=False).last_hidden_state[0, -1]
    torch.testing.assert_close(pooled[0], alone[0], rtol=0, atol=1e-5)
    assert not torch.allclose(pooled[0], pad_state)  # not the trailing pad position


def test_truncated_caption_still_reads_eos(text_encoder):
    text_encoder.eval()
    long_text = " ".join(CORPUS * 3)
    batch = text_encoder.tokenize([long_text, "edema"])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == text_encoder.max_length
    assert ids[-1] == text_encoder.tokenizer.eos_token_id
    assert text_encoder.num_truncated == 1  # counted once
    with torch.no_grad():
        pooled = text_encoder(**batch)[0]
        ref = _reference_last_state(text_encoder, ids)
        first = text_encoder.model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, 0]
    torch.testing.assert_close(pooled, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(pooled, first)  # the official code's bug read token 0 here


def test_prefix_context_keeps_eos_index(text_encoder):
    text_encoder.eval()
    batch = text_encoder.tokenize(["edema", "pleural effusion"])
    prefix = torch.randn(3, text_encoder.hidden_size)
    with torch.no_grad():
        pooled = text_encoder(**batch, prefix_embeds=prefix)
        ids = text_encoder.tokenize(["edema"])["input_ids"]
        embeds = torch.cat([prefix[None], text_encoder.input_embeddings()(ids)], dim=1)
        ref = text_encoder.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0, -1]
    torch.testing.assert_close(pooled[0], ref, rtol=0, atol=1e-5)


def test_empty_caption_is_a_named_error(text_encoder):
    with pytest.raises(ValueError, match="caption 1"):
        text_encoder.tokenize(["edema", "  "])


def test_lora_trains_only_adapters(text_encoder):
    trainable = [n for n, p in text_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("c_attn" in n for n in trainable)  # PEFT's GPT-2 default target, as the official code
    before = {n: p.detach().clone() for n, p in text_encoder.named_parameters()}
    optimizer = torch.optim.SGD([p for p in text_encoder.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # lora_B starts at zero, so lora_A moves only from the second step
        optimizer.zero_grad()
        text_encoder(**text_encoder.tokenize(CORPUS[:3])).pow(2).sum().backward()
        optimizer.step()
    for name, param in text_encoder.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == ("lora_" in name), name


def test_gradient_checkpointing_gives_same_lora_gradients(tokenizer):
    torch.manual_seed(0)
    plain = CausalLMEncoder.from_config(config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, lora_dropout=0.0)
    ckpt = CausalLMEncoder.from_config(
        config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, lora_dropout=0.0, gradient_checkpointing=True
    )
    ckpt.load_state_dict(plain.state_dict())
    with torch.no_grad():  # non-zero lora_B so lora_A gets a gradient too
        for model in (plain, ckpt):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
    for model in (plain, ckpt):
        model.train()
        model(**model.tokenize(CORPUS[:4])).pow(2).sum().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert grads
    for name, param in ckpt.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-6)


def test_llama_architecture_uses_q_v_targets(tokenizer):
    config = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 64,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    torch.manual_seed(0)
    encoder = CausalLMEncoder.from_config(config=config, tokenizer=tokenizer, max_length=16)
    assert default_lora_targets("llama") == ["q_proj", "v_proj"]
    trainable = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "v_proj"}
    encoder.eval()
    with torch.no_grad():
        out = encoder(**encoder.tokenize(["edema", CORPUS[0]]))
        alone = encoder(**encoder.tokenize(["edema"]))
    assert out.shape == (2, 32)
    torch.testing.assert_close(out[0], alone[0], rtol=0, atol=1e-5)


def test_state_round_trip_is_exact(tokenizer, text_encoder):
    with torch.no_grad():  # adapters that look trained: LoRA's B starts at zero, which would hide a lost adapter
        for name, param in text_encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    torch.manual_seed(1)  # another random base and adapters
    fresh = CausalLMEncoder.from_config(
        config=tiny_gpt2_config(len(tokenizer)), tokenizer=tokenizer, max_length=16, lora_dropout=0.0
    )
    text_encoder.eval(), fresh.eval()
    batch = text_encoder.tokenize(CORPUS[:2])
    with torch.no_grad():
        expected, before = text_encoder(**batch), fresh(**batch)
        assert not torch.allclose(before, expected, atol=1e-3)
        fresh.load_state_dict(text_encoder.state_dict(), strict=True)
        torch.testing.assert_close(fresh(**batch), expected, rtol=0, atol=0)
