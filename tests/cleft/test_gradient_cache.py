"""The gradient-cache iteration gives the full-batch parameter gradients (tolerance 1e-5) through SupervisedTrainer."""

from __future__ import annotations

import copy

import pytest
import torch
from cleft_tiny import CLASS_NAMES, TEMPLATE, tiny_cleft
from monai.engines import SupervisedTrainer

from common.engines.gradient_cache import GradientCacheIteration, split_batch
from common.methods.cleft.losses import CLEFTContrastiveLoss
from common.methods.cleft.prepare_batch import CLEFTPrepareBatch

BATCH = 8


def _batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(BATCH, 3, 28, 28, generator=gen)}
    for k, name in enumerate(CLASS_NAMES):
        batch[name] = torch.tensor([int(i % len(CLASS_NAMES) == k) for i in range(BATCH)])
    return batch


def _trainer(model, iteration_update=None, loss_chunk_size=None) -> SupervisedTrainer:
    prepare = CLEFTPrepareBatch(model.text_encoder, CLASS_NAMES, caption_template=TEMPLATE + "{}")
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[_batch()],
        network=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_function=CLEFTContrastiveLoss(chunk_size=loss_chunk_size),
        prepare_batch=prepare,
        iteration_update=iteration_update,
    )


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk_size, loss_chunk_size", [(1, None), (3, None), (3, 3), (2, 5)])
def test_gradient_cache_equals_full_batch(tokenizer, chunk_size, loss_chunk_size):
    full = tiny_cleft(tokenizer)
    cached = copy.deepcopy(full)
    reference_trainer = _trainer(full)
    reference_trainer.run()
    trainer = _trainer(cached, GradientCacheIteration(chunk_size), loss_chunk_size)
    trainer.run()
    reference, result = _grads(full), _grads(cached)
    assert set(reference) == set(result)
    assert any("lora_A" in n for n in result) and "logit_scale.log_scale" in result
    max_diff = max((reference[n] - result[n]).abs().max().item() for n in reference)
    assert max_diff < 1e-5, max_diff
    assert all(reference[n].abs().sum() > 0 for n in reference)  # every trained part receives gradient
    loss, reference_loss = (t.state.output[0]["loss"] for t in (trainer, reference_trainer))  # decollated output
    assert abs(float(loss) - float(reference_loss)) < 1e-6


def test_gradient_cache_replays_dropout(tokenizer):
    """One chunk with LoRA dropout: identical to the full batch only if the graph pass replays the RNG."""
    full = tiny_cleft(tokenizer, lora_dropout=0.5)
    cached = copy.deepcopy(full)
    torch.manual_seed(123)
    _trainer(full).run()
    torch.manual_seed(123)
    _trainer(cached, GradientCacheIteration(BATCH)).run()
    reference, result = _grads(full), _grads(cached)
    max_diff = max((reference[n] - result[n]).abs().max().item() for n in reference)
    assert max_diff < 1e-5, max_diff


def test_split_batch_and_bad_chunk_size():
    chunks = split_batch({"image": torch.zeros(5, 1), "report": list("abcde"), "flag": 3}, 2)
    assert [c["image"].shape[0] for c in chunks] == [2, 2, 1]
    assert chunks[2]["report"] == ["e"] and chunks[0]["flag"] == 3
    with pytest.raises(ValueError, match="gradient_cache_chunk_size"):
        GradientCacheIteration(0)


@pytest.mark.parametrize("rows, chunk", [(64, 16), (50, 16), (9, 4)])
def test_chunked_loss_keeps_no_batch_by_batch_logits_and_equals_the_full_loss(rows, chunk):
    gen = torch.Generator().manual_seed(0)
    features = [torch.nn.functional.normalize(torch.randn(rows, 4, generator=gen), dim=-1) for _ in range(2)]
    results = []
    for chunk_size in (None, chunk):
        leaves = [f.clone().requires_grad_(True) for f in features]
        scale = torch.tensor(14.0, requires_grad=True)
        largest = []

        def pack(tensor, largest=largest):
            largest.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = CLEFTContrastiveLoss(chunk_size=chunk_size)(
                {"image_features": leaves[0], "text_features": leaves[1], "logit_scale": scale}
            )
        loss.backward()
        results.append((loss.detach(), leaves[0].grad, leaves[1].grad, scale.grad, max(largest)))
    (full_loss, *full_grads, full_saved), (loss, *grads, saved) = results
    assert (
        full_saved == rows * rows and saved <= max(rows * 4, chunk * rows) < rows * rows
    )  # the (B, B) logits are never kept for backward
    assert torch.allclose(loss, full_loss, atol=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(full_grads, grads)) < 1e-5
