"""Number-for-number parity of our CLEFT with the official code (XYPB/CLEFT), on its reference vectors.

The reference set (``$CLEFT_REFERENCE_DIR``, default ``../shared/data/cleft_reference``) was made by running the
official modules on a tiny configuration with perturbed random weights. Sizes, captions, class names, tolerances
and the weights all come from that folder, so another set (the private one) runs through the same tests.
``official_unpadded_eos_quirk=True`` must give the official numbers (``s1.*``, ``s2.*``); the default pooling
(an attended EOS always appended) must give the ``*_eosfix`` numbers of the same official methods.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cleft_reference import (
    official_stage2_state_dict,
    reference_config,
    reference_tokenizer,
    tiny_official_cleft,
    tiny_official_stage2,
    tolerances,
)
from safetensors.torch import load_file

from common.methods.cleft.losses import CLEFTContrastiveLoss
from common.methods.cleft.model import CHEXPERT_TEMPLATE, CLEFTClassifier
from common.peft.context_prompt import ContextPrompt
from common.weights.cleft_checkpoint import CLEFTCheckpointError, load_official_cleft

MODES = {"official": True, "eosfix": False}  # suffix of the reference tensors -> official_unpadded_eos_quirk


def _suffix(mode: str) -> str:
    return "" if mode == "official" else "_eosfix"


@pytest.fixture(scope="module")
def inputs(cleft_reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(cleft_reference_dir / "cleft_tiny_inputs.safetensors"))


@pytest.fixture(scope="module")
def expected(cleft_reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(cleft_reference_dir / "cleft_tiny_expected.safetensors"))


@pytest.fixture(scope="module")
def tol(cleft_reference_dir: Path) -> dict[str, float]:
    return tolerances(cleft_reference_dir)


@pytest.fixture(scope="module", params=list(MODES))
def stage1(request, cleft_reference_dir: Path):
    """(mode, our CLEFT with the official stage-1 weights)."""
    return request.param, tiny_official_cleft(cleft_reference_dir, MODES[request.param])


@pytest.fixture(scope="module", params=list(MODES))
def stage2(request, cleft_reference_dir: Path):
    """(mode, our prompt classifier with the official stage-2 weights)."""
    return request.param, tiny_official_stage2(cleft_reference_dir, MODES[request.param])


def _close(actual: torch.Tensor, reference: torch.Tensor, tol: dict[str, float], kind: str) -> None:
    """Within the reference's recommended tolerance for ``kind`` (``features``, ``logits``, ``hidden``)."""
    if reference.numel() == 1 == actual.numel():  # the reference stores scalars as (1,)
        reference = reference.reshape(actual.shape)
    torch.testing.assert_close(actual, reference, rtol=tol["features"], atol=tol[kind])


@torch.no_grad()
def test_image_features_and_embeddings(stage1, inputs, expected, tol):
    _, model = stage1
    pixels = inputs["image.pixel_values"]
    prenorm = model.image_encoder.model.encoder(model.image_encoder.model.embeddings(pixels)).last_hidden_state
    _close(prenorm, expected["s1.image.x_prenorm"], tol, "hidden")
    _close(model.image_encoder(pixels), expected["s1.image.features"], tol, "features")
    _close(model.image_projection(model.image_encoder(pixels)), expected["s1.image.embeddings_raw"], tol, "features")
    _close(model.encode_image(pixels), expected["s1.image.embeddings"], tol, "features")


@pytest.mark.parametrize(("texts", "outputs"), [("s1.text", "s1{}.text"), ("s1.zs", "s1{}.zs.text")])
@torch.no_grad()
def test_pooled_index_and_text_embeddings(stage1, inputs, expected, tol, texts, outputs):
    """Each caption (and zero-shot prompt): the position read, the feature there, its projection."""
    mode, model = stage1
    sfx = _suffix(mode)
    ids, mask = inputs[f"{texts}.input_ids{sfx}"], inputs[f"{texts}.attention_mask{sfx}"]
    out = outputs.format(sfx)
    assert torch.equal(model.text_encoder.pooled_index(ids, mask), expected[f"{out}.pooled_index"])
    hidden = model.text_encoder.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    _close(hidden * mask[..., None], expected[f"{out}.hidden"] * mask[..., None], tol, "hidden")
    _close(model.text_encoder(ids, mask), expected[f"{out}.features"], tol, "features")
    _close(model.encode_text(ids, mask), expected[f"{out}.embeddings"], tol, "features")


def test_tokenization_gives_the_reference_ids(stage1, cleft_reference_dir, inputs):
    """Our tokenizer makes the official ids (quirk) or the always-EOS ids (default) from the reference captions."""
    mode, model = stage1
    config, sfx = reference_config(cleft_reference_dir), _suffix(mode)
    for texts, key in ((config["captions_stage1"], "s1.text"), (config["prompts_stage1"], "s1.zs")):
        tokens = model.text_encoder.tokenize(texts)
        ids, mask = inputs[f"{key}.input_ids{sfx}"], inputs[f"{key}.attention_mask{sfx}"]
        for row, n in enumerate(mask.sum(1).tolist()):  # the attended tokens (pads after them change nothing)
            assert tokens["input_ids"][row, :n].tolist() == ids[row, :n].tolist(), (key, row)
            assert tokens["attention_mask"][row].sum() == n, (key, row)
        if MODES[mode]:  # the official pooling depends on the padding: to max_words exactly
            assert torch.equal(tokens["input_ids"], ids) and torch.equal(tokens["attention_mask"], mask)


@torch.no_grad()
def test_logits_and_clip_loss(stage1, inputs, expected, tol):
    mode, model = stage1
    sfx = _suffix(mode)
    batch = {
        "image": inputs["image.pixel_values"],
        "input_ids": inputs[f"s1.text.input_ids{sfx}"],
        "attention_mask": inputs[f"s1.text.attention_mask{sfx}"],
    }
    out = model(batch)
    _close(out["logit_scale"], expected["s1.logit_scale_exp"], tol, "features")
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].t()
    _close(logits, expected[f"s1{sfx}.logits"], tol, "logits")
    _close(CLEFTContrastiveLoss()(out), expected[f"s1{sfx}.loss"], tol, "logits")


@torch.no_grad()
def test_zero_shot_predictions(stage1, cleft_reference_dir, inputs, expected, tol):
    """The zero-shot classifier tokenizes the class prompts itself (template + lower-cased class name)."""
    mode, model = stage1
    config, sfx = reference_config(cleft_reference_dir), _suffix(mode)
    classifier = CLEFTClassifier(model, config["class_names"], template=CHEXPERT_TEMPLATE)
    assert classifier.class_prompts() == config["prompts_stage1"]
    out = classifier({"image": inputs["image.pixel_values"]})
    _close(classifier.class_features(), expected[f"s1{sfx}.zs.text.embeddings"], tol, "features")
    _close(out["logits"], expected[f"s1{sfx}.zs.logits"], tol, "logits")
    _close(out["probs"], expected[f"s1{sfx}.zs.probs"], tol, "logits")
    assert torch.equal(out["logits"].argmax(-1), expected[f"s1{sfx}.zs.pred"])


@torch.no_grad()
def test_stage2_captions_with_the_context(stage2, inputs, expected, tol):
    """The official stage-2 training step: stage-1 contrastive forward on captions after the learned context."""
    mode, classifier = stage2
    sfx = _suffix(mode)
    clip, context = classifier.clip, classifier.context()
    ids, mask = inputs[f"s2.text.input_ids{sfx}"], inputs[f"s2.text.attention_mask{sfx}"]
    assert torch.equal(context, expected["s2.prompt_embedding"])
    ones = torch.ones(ids.shape[0], context.shape[0], dtype=mask.dtype)
    padded_ids = torch.cat([torch.zeros_like(ones), ids], dim=1)  # context positions hold no EOS id
    index = clip.text_encoder.pooled_index(padded_ids, torch.cat([ones, mask], dim=1))
    assert torch.equal(index, expected[f"s2{sfx}.text.pooled_index"])
    _close(clip.text_encoder(ids, mask, context), expected[f"s2{sfx}.text.features"], tol, "features")
    text = clip.encode_text(ids, mask, context)
    image = clip.encode_image(inputs["image.pixel_values"])
    _close(image, expected["s2.image.embeddings"], tol, "features")
    _close(clip.logit_scale(), expected["s2.logit_scale_exp"], tol, "features")
    out = {"image_features": image, "text_features": text, "logit_scale": clip.logit_scale()}
    _close(clip.logit_scale() * image @ text.t(), expected[f"s2{sfx}.logits"], tol, "logits")
    _close(CLEFTContrastiveLoss()(out), expected[f"s2{sfx}.loss"], tol, "logits")


@torch.no_grad()
def test_stage2_class_prompt_embeddings_and_logits(stage2, inputs, expected, tol):
    """Class prompts = context + class name (the official 'X ' trick gives the same ids); logits and predictions."""
    mode, classifier = stage2
    sfx = _suffix(mode)
    ids, mask = inputs[f"s2.zs.input_ids{sfx}"], inputs[f"s2.zs.attention_mask{sfx}"]
    tokens = classifier.clip.text_encoder.tokenize(classifier.class_prompts())
    for row, n in enumerate(mask.sum(1).tolist()):
        assert tokens["input_ids"][row, :n].tolist() == ids[row, :n].tolist()
    _close(classifier.class_features(), expected[f"s2{sfx}.zs.text.embeddings"], tol, "features")
    out = classifier({"image": inputs["image.pixel_values"]})
    _close(out["logits"], expected[f"s2{sfx}.zs.logits"], tol, "logits")
    _close(out["probs"], expected[f"s2{sfx}.zs.probs"], tol, "logits")
    assert torch.equal(out["logits"].argmax(-1), expected[f"s2{sfx}.zs.pred"])


def test_context_init_is_peft_text_init(cleft_reference_dir, expected):
    """Our context initialised from the official init text equals PEFT's PromptTuningInit.TEXT rows."""
    config = reference_config(cleft_reference_dir)
    model = tiny_official_cleft(cleft_reference_dir, True)
    context = ContextPrompt.from_text(
        config["prompt_init_text"],
        config["ctx_length"],
        reference_tokenizer(cleft_reference_dir),
        model.text_encoder.input_embeddings(),
    )
    assert torch.equal(context(), expected["s2.prompt_embedding_init"])


def test_loader_names_what_does_not_fit(cleft_reference_dir):
    """Stage 2 into CLEFT, stage 1 into a prompt classifier, an unknown key, a missing key: each a named error."""
    model = tiny_official_cleft(cleft_reference_dir, False)
    stage1 = load_file(str(cleft_reference_dir / "cleft_tiny_stage1.safetensors"))
    with pytest.raises(CLEFTCheckpointError, match="prompt_encoder.default.embedding.weight"):
        load_official_cleft(model, official_stage2_state_dict(cleft_reference_dir))
    config = reference_config(cleft_reference_dir)
    context = ContextPrompt(config["ctx_length"], model.text_encoder.hidden_size)
    with pytest.raises(CLEFTCheckpointError, match=r"does not fill \(1\).*context\.context"):
        load_official_cleft(CLEFTClassifier(model, config["class_names"], context=context), stage1)
    with pytest.raises(CLEFTCheckpointError, match="img_encoder_q.extra_head.weight"):
        load_official_cleft(model, {**stage1, "img_encoder_q.extra_head.weight": torch.zeros(1)})
    dropped = dict(stage1)
    dropped.pop("text_encoder_q.global_embed.bias")
    with pytest.raises(CLEFTCheckpointError, match=r"does not fill \(1\): \['text_projection.bias'\]"):
        load_official_cleft(model, dropped)
    wrong = {**stage1, "logit_scale": torch.zeros(2)}
    with pytest.raises(CLEFTCheckpointError, match="shape mismatches"):
        load_official_cleft(model, wrong)
