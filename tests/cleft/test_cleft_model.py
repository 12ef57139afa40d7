"""CLEFT dual encoder and stage-2 classifier: shapes, clamped scale, what trains, checkpoint reload, bad input."""

from __future__ import annotations

import pytest
import torch
from cleft_tiny import CLASS_NAMES, TEMPLATE, tiny_cleft

from common.engines.checkpoint import load_trained_weights, save_safetensors, trained_state_dict
from common.methods.cleft.losses import PromptClassificationLoss
from common.methods.cleft.model import CLEFTClassifier
from common.methods.cleft.prepare_batch import CLEFTPrepareBatch, label_matrix
from common.peft.context_prompt import ContextPrompt
from common.peft.lora import load_lora_folder, save_lora_folder


def _inputs(model, n: int = 4) -> dict:
    torch.manual_seed(1)
    tokens = model.text_encoder.tokenize([TEMPLATE + c for c in CLASS_NAMES[:n]])
    return {"image": torch.randn(n, 3, 28, 28), **tokens}


def test_forward_normalised_features_and_clamped_scale(tokenizer):
    model = tiny_cleft(tokenizer).eval()
    out = model(_inputs(model))
    assert out["image_features"].shape == out["text_features"].shape == (4, 16)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(10.0)
    assert model(_inputs(model))["logit_scale"].item() == pytest.approx(100.0)


def test_stage1_trains_lora_projections_scale_and_vit_only(tokenizer):
    model = tiny_cleft(tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    text_side = [n for n in trainable if n.startswith("text_encoder.")]
    assert text_side and all("lora_" in n for n in text_side)
    assert {"image_projection.weight", "text_projection.weight", "logit_scale.log_scale"} <= set(trainable)
    assert "image_encoder.model.layernorm.weight" not in trainable  # bypassed by the pre-norm mean pooling


def test_non_2d_image_is_a_named_error(tokenizer):
    model = tiny_cleft(tokenizer)
    with pytest.raises(ValueError, match="2D images"):
        model({"image": torch.randn(2, 1, 3, 28, 28)})


def test_checkpoint_reload_gives_identical_outputs(tokenizer, tmp_path):
    trained = tiny_cleft(tokenizer, seed=0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = trained_state_dict(trained)
    assert all(not k.startswith("text_encoder.") or "lora_" in k for k in state)  # no frozen LM weights saved
    save_safetensors(state, tmp_path / "model.safetensors")
    # the frozen base must be the same pretrained weights: same seed, then load only what was trained
    fresh = tiny_cleft(tokenizer, seed=0)
    load_trained_weights(fresh, tmp_path / "model.safetensors")
    trained.eval(), fresh.eval()
    batch = _inputs(trained)
    with torch.no_grad():
        a, b = trained(batch), fresh(batch)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    save_safetensors({"nonexistent.weight": torch.zeros(1), **state}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="nonexistent.weight"):
        load_trained_weights(fresh, tmp_path / "bad.safetensors")


def test_lora_peft_folder_round_trip(tokenizer, tmp_path):
    model = tiny_cleft(tokenizer, seed=0)
    save_lora_folder(model.text_encoder.model, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    other = tiny_cleft(tokenizer, seed=0)
    base = other.text_encoder.model.get_base_model()
    with torch.no_grad():  # wipe the adapters: the folder must bring them back
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.zero_()
    base = other.text_encoder.model.unload()
    other.text_encoder.model = load_lora_folder(base, tmp_path / "lora")
    model.eval(), other.eval()
    batch = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["text_features"], other(batch)["text_features"], rtol=0, atol=1e-6)


def test_context_init_from_caption_template(tokenizer):
    model = tiny_cleft(tokenizer)
    table = model.text_encoder.input_embeddings()
    context = ContextPrompt.from_text(TEMPLATE, 30, tokenizer, table)
    ids = tokenizer(TEMPLATE, add_special_tokens=False)["input_ids"]
    assert context().shape == (30, 32)
    torch.testing.assert_close(context()[: len(ids)], table.weight[ids])
    torch.testing.assert_close(context()[len(ids)], table.weight[ids[0]])  # tiled
    with pytest.raises(ValueError, match="num_context_tokens"):
        ContextPrompt(0, 32)


@pytest.mark.parametrize("extra", [(), ("image_projection",)])
def test_stage2_trains_only_context_and_what_config_unfreezes(tokenizer, extra):
    clip = tiny_cleft(tokenizer)
    context = ContextPrompt.from_text(TEMPLATE, 8, tokenizer, clip.text_encoder.input_embeddings())
    classifier = CLEFTClassifier(clip, CLASS_NAMES, context=context, trainable=extra)
    trainable = {n for n, p in classifier.named_parameters() if p.requires_grad}
    expected = {"context.context"} | {f"clip.{part}.{w}" for part in extra for w in ("weight", "bias")}
    assert trainable == expected
    before = {n: p.detach().clone() for n, p in classifier.named_parameters()}
    optimizer = torch.optim.SGD([p for p in classifier.parameters() if p.requires_grad], lr=0.5)
    batch = {"image": torch.randn(5, 3, 28, 28)}
    loss = PromptClassificationLoss()(classifier(batch), torch.arange(5))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in classifier.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == expected


def test_zero_shot_and_prompt_logits(tokenizer):
    clip = tiny_cleft(tokenizer).eval()
    zero_shot = CLEFTClassifier(clip, CLASS_NAMES, template=TEMPLATE + "{}")
    assert zero_shot.class_prompts()[1] == TEMPLATE + "edema"
    with torch.no_grad():
        out = zero_shot({"image": torch.randn(3, 3, 28, 28)})
    assert out["logits"].shape == (3, 5)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(3))
    assert any(p.requires_grad for p in clip.parameters())  # zero-shot wrapping leaves the model trainable
    with pytest.raises(ValueError, match="unknown part"):
        CLEFTClassifier(clip, CLASS_NAMES, trainable=("text_projection",))


def test_class_name_not_in_label_set_is_named(tokenizer):
    batch = {"image": torch.zeros(2, 3, 28, 28), "edema": torch.tensor([1, 0])}
    with pytest.raises(ValueError, match="pneumothorax"):
        label_matrix(batch, ["edema", "pneumothorax"])
    prepare = CLEFTPrepareBatch(None, ["edema"])
    with pytest.raises(ValueError, match="no positive class"):
        prepare(batch)


def test_prompt_names_map_label_columns_to_prompt_text(tokenizer):
    clip = tiny_cleft(tokenizer)
    classifier = CLEFTClassifier(
        clip,
        ["birads_0", "birads_1"],
        template="a mammogram with {}.",
        prompt_names=["BIRADS score 0: additional imaging required", "birads score 1: negative"],
    )
    assert classifier.class_prompts() == [
        "a mammogram with birads score 0: additional imaging required.",
        "a mammogram with birads score 1: negative.",
    ]
    with pytest.raises(ValueError, match="class_prompt_names"):
        CLEFTClassifier(clip, ["a", "b"], prompt_names=["only one"])
    prepare = CLEFTPrepareBatch(
        clip.text_encoder,
        ["birads_0", "birads_1"],
        caption_template="a mammogram with {}.",
        prompt_names=["birads score 0", "birads score 1"],
    )
    batch = {"image": torch.zeros(2, 3, 28, 28), "birads_0": torch.tensor([0, 1]), "birads_1": torch.tensor([1, 0])}
    assert prepare.captions(batch) == ["a mammogram with birads score 1.", "a mammogram with birads score 0."]
