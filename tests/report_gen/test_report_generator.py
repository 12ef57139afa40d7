"""The report generator: soft prompt placement, label masking, stage freezing, deterministic generation, reload."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from common.data.report_tokenization import IGNORE_INDEX, ReportCollator
from common.methods.report_gen.checkpoint import load_report_gen_checkpoint, save_report_gen_checkpoint
from common.methods.report_gen.stages import configure_stage, trainable_parameter_names
from common.peft.soft_visual_prompt import (
    PromptTemplate,
    VisualProjector,
    nearest_vocabulary_tokens,
    place_soft_prompts,
)

from .conftest import REPORTS, tiny_generator


def test_soft_prompts_sit_where_the_template_puts_the_marker(word_tokenizer, template, train_batch, num_visual_tokens):
    model = tiny_generator(word_tokenizer).eval()
    start = len(template.prefix_ids)
    mask = train_batch["image_token_mask"]
    expected = torch.zeros_like(mask)
    expected[:, start : start + num_visual_tokens] = True
    assert torch.equal(mask, expected)

    with torch.no_grad():
        embeds = model.input_embeddings(train_batch)
        prompts = model.projector(model.vision_encoder(train_batch["image"]))
        words = model.language_model.get_input_embeddings()(train_batch["input_ids"])
    assert torch.allclose(embeds[:, start : start + num_visual_tokens], prompts)
    assert torch.equal(embeds[~mask], words[~mask])
    # the template's own words surround the visual tokens, in order
    assert train_batch["input_ids"][0, :start].tolist() == list(template.prefix_ids)
    suffix = train_batch["input_ids"][0, start + num_visual_tokens : template.length].tolist()
    assert suffix == list(template.suffix_ids)
    assert word_tokenizer.decode(template.suffix_ids).strip() == "chest x - ray :"


def test_template_needs_exactly_one_marker(word_tokenizer):
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate.from_text("no marker here", word_tokenizer, 4)
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate.from_text("<image> and <image>", word_tokenizer, 4)


def test_place_soft_prompts_rejects_wrong_counts():
    embeds, prompts = torch.zeros(2, 6, 4), torch.ones(2, 3, 4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 1:3] = True
    with pytest.raises(ValueError, match="3 image positions"):
        place_soft_prompts(embeds, prompts, mask)


def test_loss_covers_report_tokens_only(word_tokenizer, template, train_batch):
    labels = train_batch["labels"]
    for row, report in enumerate(REPORTS):
        target = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert target == word_tokenizer(report, add_special_tokens=False)["input_ids"] + [word_tokenizer.eos_token_id]
        assert (labels[row, : template.length] == IGNORE_INDEX).all()  # prompt and visual tokens are never targets
    assert (labels[train_batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # nor is padding

    model = tiny_generator(word_tokenizer).eval()
    with torch.no_grad():
        out = model(train_batch)
    # the model's loss is the mean next-token cross-entropy over the report positions alone
    logits, shifted = out["logits"][:, :-1], labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    manual = F.cross_entropy(logits[keep], shifted[keep])
    assert torch.allclose(out["loss"], manual, atol=1e-6)
    # the IGNORE_INDEX labels, not a position rule inside the model, are what keep the prompt out: labels that
    # leak the prompt tokens are counted, exactly as the same cross-entropy over the leaked positions says
    leaky = labels.clone()
    leaky[:, 1 : template.length] = train_batch["input_ids"][:, 1 : template.length]
    with torch.no_grad():
        leaky_loss = model({**train_batch, "labels": leaky})["loss"]
    leaky_shifted = leaky[:, 1:]
    leaky_keep = leaky_shifted != IGNORE_INDEX
    assert leaky_keep.sum() > keep.sum()
    torch.testing.assert_close(
        leaky_loss, F.cross_entropy(logits[leaky_keep], leaky_shifted[leaky_keep]), atol=1e-6, rtol=0
    )
    assert not torch.allclose(leaky_loss, out["loss"])


def test_long_reports_are_truncated_and_counted(word_tokenizer, template, items, caplog):
    collate = ReportCollator(word_tokenizer, template, text_max_length=5)
    with caplog.at_level("WARNING"):
        batch = collate(items)
    assert collate.num_truncated == 4 and collate.num_seen == 4
    assert "study0" in caplog.text and "truncated" in caplog.text
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) == 6).all()  # 5 report tokens + EOS
    assert batch["report"][0] == REPORTS[0]  # the untruncated report stays the reference


@pytest.mark.parametrize("report", ["", "   \n\t "])
def test_empty_report_is_an_error_naming_the_item(word_tokenizer, template, items, report):
    items[2]["report"] = report
    with pytest.raises(ValueError, match="study2.*non-empty report"):
        ReportCollator(word_tokenizer, template)(items)


def test_stage1_trains_only_the_projector(word_tokenizer, train_batch):
    model = configure_stage(tiny_generator(word_tokenizer), stage=1)
    names = trainable_parameter_names(model)
    assert names and all(n.startswith("projector.") for n in names)
    assert len(names) == len(list(model.projector.parameters()))

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    projector_before = [p.detach().clone() for p in model.projector.parameters()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(train_batch)["loss"].backward()
    optimizer.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    assert any(not torch.equal(a, b) for a, b in zip(projector_before, model.projector.parameters()))


def test_stage2_adds_only_lora_in_the_llm(word_tokenizer, train_batch):
    model = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_alpha=8, lora_targets=["c_attn"])
    names = trainable_parameter_names(model)
    projector = [n for n in names if n.startswith("projector.")]
    lora = [n for n in names if not n.startswith("projector.")]
    assert len(projector) == len(list(model.projector.parameters()))
    assert lora and all(n.startswith("language_model.") and ".lora_" in n and "c_attn" in n for n in lora)
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    model(train_batch)["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n)


def test_stage2_optional_vision_lora(word_tokenizer):
    model = configure_stage(
        tiny_generator(word_tokenizer),
        stage=2,
        lora_rank=2,
        lora_targets=["c_attn"],
        vision_lora_targets=["q_proj", "v_proj"],
    )
    vision = [n for n in trainable_parameter_names(model) if n.startswith("vision_encoder.")]
    assert vision and all(".lora_" in n for n in vision)


def test_stage_must_be_1_or_2(word_tokenizer):
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        configure_stage(tiny_generator(word_tokenizer), stage=3)


def test_greedy_generation_is_deterministic_and_batch_independent(word_tokenizer, prompt_batch):
    model = tiny_generator(word_tokenizer, seed=1).eval()
    first = model.generate(prompt_batch, max_new_tokens=8)
    second = model.generate(prompt_batch, max_new_tokens=8)
    assert torch.equal(first, second)
    one = model.generate({k: v[:1] for k, v in prompt_batch.items()}, max_new_tokens=8)
    assert torch.equal(one[0], first[0, : one.shape[1]])
    no_cache = model.generate(prompt_batch, max_new_tokens=8, use_cache=False)
    assert torch.equal(no_cache, first)
    beams = model.generate(prompt_batch, max_new_tokens=8, num_beams=3, repetition_penalty=1.3)
    assert beams.shape[0] == len(REPORTS) and beams.shape[1] <= 8


def test_mlp_projector_and_gradient_checkpointing(word_tokenizer, train_batch):
    plain = tiny_generator(word_tokenizer, projector_type="mlp")
    model = tiny_generator(word_tokenizer, projector_type="mlp", gradient_checkpointing=True)
    assert isinstance(model.projector.proj, torch.nn.Sequential)
    for net in (plain, model):
        configure_stage(net, stage=1).train()
        net(train_batch)["loss"].backward()

    def checkpointing(llm):  # transformers >= 5.21 names it is_activation_checkpointing, 5.20 is_gradient_checkpointing
        return getattr(llm, "is_activation_checkpointing", None) or getattr(llm, "is_gradient_checkpointing", False)

    assert checkpointing(model.language_model) and not checkpointing(plain.language_model)
    # recomputation gives the projector the same gradients as keeping the activations
    for p, q in zip(plain.projector.parameters(), model.projector.parameters()):
        assert q.grad is not None and q.grad.abs().sum() > 0
        assert torch.allclose(p.grad, q.grad, atol=1e-5)
    with pytest.raises(ValueError, match="projector_type"):
        VisualProjector(4, 4, kind="conv")


def test_checkpoint_holds_only_trained_weights_and_reloads_to_identical_generations(
    word_tokenizer, prompt_batch, tmp_path
):
    model = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_targets=["c_attn"])
    with torch.no_grad():  # LoRA B starts at zero: move it so that the adapters change the outputs
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    model.eval()
    expected = model.generate(prompt_batch, max_new_tokens=10, num_beams=2)
    save_report_gen_checkpoint(model, tmp_path / "ckpt", {"llm": "tiny gpt2"})
    files = sorted(p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    assert files == [
        "base_models.json",
        "llm_lora/README.md",
        "llm_lora/adapter_config.json",
        "llm_lora/adapter_model.safetensors",
        "llm_lora/base_models.json",
        "projector.safetensors",
    ] or files == [
        "base_models.json",
        "llm_lora/adapter_config.json",
        "llm_lora/adapter_model.safetensors",
        "llm_lora/base_models.json",
        "projector.safetensors",
    ]

    fresh = tiny_generator(word_tokenizer)  # same base weights (same seed), untrained projector, no adapters
    assert not torch.equal(fresh.eval().generate(prompt_batch, max_new_tokens=10, num_beams=2), expected)
    load_report_gen_checkpoint(fresh, tmp_path / "ckpt").eval()
    assert torch.equal(fresh.generate(prompt_batch, max_new_tokens=10, num_beams=2), expected)

    # an existing stage-2 model loads the adapters into its own LoRA layers
    again = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_targets=["c_attn"])
    load_report_gen_checkpoint(again, tmp_path / "ckpt").eval()
    assert torch.equal(again.generate(prompt_batch, max_new_tokens=10, num_beams=2), expected)


def test_model_pt_reloads_to_identical_generations_and_refuses_another_base(word_tokenizer, prompt_batch, tmp_path):
    model = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_targets=["c_attn"])
    with torch.no_grad():  # LoRA B starts at zero: move it so that the adapters change the outputs
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    model.eval()
    expected = model.generate(prompt_batch, max_new_tokens=10, num_beams=2)
    save_report_gen_checkpoint(model, tmp_path / "stage2", {"projector_type": "linear"}, model_pt=True)
    content = torch.load(tmp_path / "model.pt", weights_only=True)  # the model zoo's reader
    assert {k.split(".")[0] for k in content} == {"projector", "llm_lora"}
    assert sum(v.numel() for v in content.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )  # only what trained
    fresh = tiny_generator(word_tokenizer)  # same base, untrained projector, no adapters
    load_report_gen_checkpoint(fresh, tmp_path / "model.pt", expected_record={"projector_type": "linear"}).eval()
    assert torch.equal(fresh.generate(prompt_batch, max_new_tokens=10, num_beams=2), expected)
    other = tiny_generator(word_tokenizer)
    with torch.no_grad():
        other.language_model.get_input_embeddings().weight.add_(1e-3)
    with pytest.raises(ValueError, match="belongs to base model"):
        load_report_gen_checkpoint(other, tmp_path / "model.pt")


def test_checkpoint_errors_name_the_folder(word_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="projector.safetensors"):
        load_report_gen_checkpoint(tiny_generator(word_tokenizer), tmp_path)


@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_lowers_the_loss(word_tokenizer, train_batch, stage):
    model = configure_stage(tiny_generator(word_tokenizer), stage=stage, lora_targets=["c_attn", "c_proj", "c_fc"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(train_batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < (0.85 if stage == 1 else 0.3) * losses[0]


def test_checkpoint_refuses_other_base_models(word_tokenizer, tmp_path):
    model = configure_stage(tiny_generator(word_tokenizer), stage=1)
    record = {"llm_path": "/weights/open_llama_7b_v2", "projector_type": "linear", "prompt_template": "a <image> b"}
    save_report_gen_checkpoint(model, tmp_path / "ckpt", {**record, "stage": 1}, base_name=record["llm_path"])
    moved = {**record, "llm_path": "/elsewhere/open_llama_7b_v2"}  # same weights in another folder: fine
    load_report_gen_checkpoint(tiny_generator(word_tokenizer), tmp_path / "ckpt", expected_record={**moved, "stage": 2})
    with pytest.raises(ValueError, match="trained with another projector or prompt: prompt_template"):
        load_report_gen_checkpoint(
            tiny_generator(word_tokenizer), tmp_path / "ckpt", expected_record={**record, "prompt_template": "x"}
        )
    other = tiny_generator(word_tokenizer)
    with torch.no_grad():  # other LLM weights than the ones the projector was trained for
        other.language_model.get_input_embeddings().weight.add_(1e-3)
    with pytest.raises(ValueError, match=r"belongs to base model /weights/open_llama_7b_v2 .* given base model /x"):
        load_report_gen_checkpoint(other, tmp_path / "ckpt", base_name="/x")


def test_adapter_folder_names_its_base_and_loads_with_plain_peft(word_tokenizer, prompt_batch, tmp_path):
    from peft import PeftModel

    model = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_targets=["c_attn"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    save_report_gen_checkpoint(model, tmp_path / "ckpt", base_name="/weights/llm")
    config = json.loads((tmp_path / "ckpt" / "llm_lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/weights/llm"
    plain = tiny_generator(word_tokenizer).language_model
    loaded = PeftModel.from_pretrained(plain, str(tmp_path / "ckpt" / "llm_lora")).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.language_model.eval()(ids).logits, rtol=0, atol=0)


def test_nearest_vocabulary_tokens_finds_the_embedding_a_prompt_copies():
    vocab = torch.randn(50, 8)
    prompts = torch.stack([vocab[7] * 3.0, vocab[42] + 1e-3])  # scaled / nudged copies of two word embeddings
    ids, sims = nearest_vocabulary_tokens(prompts.unsqueeze(0), vocab, k=2)
    assert ids.shape == (1, 2, 2) and ids[0, :, 0].tolist() == [7, 42]
    assert torch.allclose(sims[0, :, 0], torch.ones(2), atol=1e-4)
    with pytest.raises(ValueError, match="width 8 but the embedding matrix 4"):
        nearest_vocabulary_tokens(prompts, torch.randn(5, 4))


def test_checkpoint_handlers_keep_the_latest_and_the_best_validated_epoch(word_tokenizer, tmp_path):
    from ignite.engine import Engine, Events

    from common.engines.checkpoint import EngineCheckpoint, metric_score
    from common.engines.save_handler import TrainedWeightsSaveHandler
    from common.methods.report_gen.checkpoint import checkpoint_objects, report_gen_fingerprint

    model = configure_stage(tiny_generator(word_tokenizer), stage=1)
    scores = iter([0.1, 0.3, 0.2])
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.COMPLETED)
    def _score(engine):
        engine.state.metrics["BLEU-4"] = next(scores)

    def step(engine, batch):
        with torch.no_grad():
            model.projector.norm.bias.fill_(float(engine.state.epoch))  # marks which epoch a checkpoint holds

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0]))
    objects = checkpoint_objects(model)
    handler = TrainedWeightsSaveHandler(tmp_path, report_gen_fingerprint(model), to_save=objects)
    EngineCheckpoint(objects, handler, events=["EPOCH_COMPLETED", "COMPLETED"], filename_pattern="stage1").attach(
        trainer
    )
    score = metric_score("BLEU-4", engine=evaluator)
    EngineCheckpoint(
        objects, handler, filename_pattern="stage1_best", score_function=score, score_name="BLEU-4"
    ).attach(trainer)
    trainer.run([0], max_epochs=3)

    def epoch_of(folder):
        fresh = tiny_generator(word_tokenizer)
        load_report_gen_checkpoint(fresh, folder)
        return int(fresh.projector.norm.bias[0])

    assert epoch_of(tmp_path / "stage1") == 3  # the latest
    assert epoch_of(tmp_path / "stage1_best") == 2  # the best BLEU-4 (0.3)
    best = json.loads((tmp_path / "stage1_best" / "base_models.json").read_text())
    assert best["epoch"] == 2 and best["BLEU-4"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1", "stage1_best"]


def test_collate_names_items_without_report_or_with_mismatched_images(word_tokenizer, template, items):
    del items[1]["report"]
    with pytest.raises(ValueError, match=r"\['study1'\] have no 'report' field"):
        ReportCollator(word_tokenizer, template)(items)
    items[1]["report"] = "no effusion ."
    items[3]["image"] = torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match="differ in shape"):
        ReportCollator(word_tokenizer, template)(items)
