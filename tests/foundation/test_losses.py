"""Losses against hand-computed values, and the distributed CLIP loss against the single-process full batch."""

from __future__ import annotations

import inspect
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from common.losses import ClipLoss, LabelAwarePairwiseSigmoidLoss, LogitScale, pair_targets


def test_logit_scale_starts_at_clip_init_and_clamps():
    scale = LogitScale(temperature_init=0.07, max_scale=100.0)
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)  # exp(10) > 100
    assert scale().item() == pytest.approx(100.0, rel=1e-6)
    with pytest.raises(ValueError, match="above max_scale"):
        LogitScale(temperature_init=0.005, max_scale=100.0)


@pytest.mark.parametrize("mistake", [1 / 0.07, 100.0, math.log(1 / 0.07), 0.0, -0.07, float("nan")])
def test_a_temperature_that_is_really_a_logit_scale_or_nonsense_is_refused(mistake):
    """Every bundle's ``temperature``/``temperature_init`` is tau; 14.3 (1/tau), 100 or 2.66 (log 1/tau) are refused."""
    for build in (
        lambda: LogitScale(temperature_init=mistake),
        lambda: LabelAwarePairwiseSigmoidLoss(temperature=mistake),
    ):
        with pytest.raises(ValueError, match="temperature"):
            build()
    if mistake > 1:
        with pytest.raises(ValueError, match="looks like a logit scale"):
            LogitScale(temperature_init=mistake)


def test_ctclip_temperature_init_is_tau_and_keeps_ct_clips_log_scale_parameter():
    from common.methods.ctclip.model import CTCLIP

    defaults = inspect.signature(CTCLIP.__init__).parameters
    tau = defaults["temperature_init"].default
    assert tau == pytest.approx(math.exp(-1.0))  # CT-CLIP initialises its log scale at 1.0


def test_clip_loss_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    # logits_per_image = 2 * [[1, 0.6], [0, 0.8]]; targets = [0, 1]
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    # logits_per_text = 2 * [[1, 0], [0.6, 0.8]]
    col0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    assert ClipLoss()(image, text, scale).item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(torch.randn(4, 8), torch.randn(4, 6), 1.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        ClipLoss()(torch.randn(1, 8), torch.randn(1, 8), 1.0)


def test_pairwise_sigmoid_loss_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    temperature = 0.5
    # pairs (0,1) same: dot 1 -> logit 2; (0,2) diff: dot 0 -> 0; (1,2) diff: dot 0 -> 0
    expected = (F.softplus(torch.tensor(-2.0)) + 2 * F.softplus(torch.tensor(0.0))) / 3
    loss = LabelAwarePairwiseSigmoidLoss(temperature=temperature)(z, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pairwise_sigmoid_loss_is_small_for_separated_labels_and_large_when_swapped():
    z = torch.tensor([[3.0, 0.0], [3.0, 0.0], [-3.0, 0.0], [-3.0, 0.0]])  # no bias: negatives need dot < 0
    loss = LabelAwarePairwiseSigmoidLoss(temperature=0.1)
    assert loss(z, torch.tensor([0, 0, 1, 1])).item() < 1e-3
    assert loss(z, torch.tensor([0, 1, 0, 1])).item() > 10


def test_pairwise_multilabel_targets_share_any_label():
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    _, _, target = pair_targets(labels)
    assert target.tolist() == [1.0, 0.0, 1.0]  # (0,1) share 0; (0,2) share none; (1,2) share 1


def test_pairwise_multilabel_loss_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])  # targets (0,1)=1, (0,2)=0, (1,2)=1
    # logits with T = 0.5: <z0,z1>=0 -> 0; <z0,z2>=1 -> 2; <z1,z2>=1 -> 2
    expected = (F.softplus(torch.tensor(-0.0)) + F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(-2.0))) / 3
    loss = LabelAwarePairwiseSigmoidLoss(temperature=0.5)(z, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_two_all_negative_rows_are_a_positive_pair():
    """Label equality (the paper's target): two rows with no positive label share the label "none"."""
    labels = torch.tensor([[0, 0], [0, 0], [1, 0]])
    _, _, target = pair_targets(labels)
    assert target.tolist() == [1.0, 0.0, 0.0]  # (0,1) both empty; (0,2), (1,2) differ


def test_binary_task_as_one_multi_hot_column_equals_class_ids():
    ids = torch.tensor([0, 1, 0, 1, 1, 0])
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    _, _, from_ids = pair_targets(ids)
    _, _, from_column = pair_targets(ids[:, None])
    assert from_column.tolist() == from_ids.tolist()
    loss = LabelAwarePairwiseSigmoidLoss()
    assert loss(z, ids[:, None]).item() == pytest.approx(loss(z, ids).item(), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, image, text, gather_with_grad: bool, queue) -> None:
    import warnings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    local = slice(rank * 2, rank * 2 + 2)
    image_local = image[local].clone().requires_grad_(True)
    text_local = text[local].clone().requires_grad_(True)
    loss_fn = ClipLoss(gather_with_grad=gather_with_grad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(image_local, text_local, 5.0).backward()
        loss_fn(image_local.detach(), text_local.detach(), 5.0)  # a second call: warned once per loss
    messages = [str(w.message) for w in caught if "gather_with_grad" in str(w.message)]
    # the gather's backward already sums every rank's loss gradient into this rank's rows; DDP then divides by
    # the world size, which makes the full-batch mean of the per-rank losses
    grads = torch.cat([image_local.grad, text_local.grad], dim=1) / world
    queue.put((rank, grads.numpy(), messages))
    torch.distributed.destroy_process_group()


def _run_two_ranks(image: torch.Tensor, text: torch.Tensor, gather_with_grad: bool) -> tuple[torch.Tensor, list]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, image, text, gather_with_grad, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: (grads, messages) for rank, grads, messages in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
    grads = torch.cat([torch.as_tensor(results[0][0]), torch.as_tensor(results[1][0])])
    return grads, [results[0][1], results[1][1]]


def _full_batch_gradient(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    full_image, full_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    ClipLoss()(full_image, full_text, 5.0).backward()
    return torch.cat([full_image.grad, full_text.grad], dim=1)


def test_gathered_clip_loss_gives_the_full_batch_gradient_across_two_ranks():
    torch.manual_seed(0)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    got, messages = _run_two_ranks(image, text, gather_with_grad=True)
    # each rank holds the gradient of its own rows; the loss mean over ranks equals the full-batch loss
    torch.testing.assert_close(got, _full_batch_gradient(image, text), rtol=1e-5, atol=1e-6)
    assert messages == [[], []]


def _local_rows_gradient(image: torch.Tensor, text: torch.Tensor, rank: int) -> torch.Tensor:
    """The gradient of rank ``rank``'s rows when the other ranks' (normalised) features are constants."""
    local = slice(rank * 2, rank * 2 + 2)
    image_local, text_local = image[local].clone().requires_grad_(True), text[local].clone().requires_grad_(True)
    all_images, all_texts = F.normalize(image, dim=-1).clone(), F.normalize(text, dim=-1).clone()
    all_images[local], all_texts[local] = F.normalize(image_local, dim=-1), F.normalize(text_local, dim=-1)
    targets = torch.arange(2) + rank * 2
    loss = 0.5 * (
        F.cross_entropy(5.0 * F.normalize(image_local, dim=-1) @ all_texts.t(), targets)
        + F.cross_entropy(5.0 * F.normalize(text_local, dim=-1) @ all_images.t(), targets)
    )
    loss.backward()
    return torch.cat([image_local.grad, text_local.grad], dim=1) / 2


def test_clip_loss_without_gathered_gradient_warns_once_that_it_is_not_the_full_batch_gradient():
    torch.manual_seed(0)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    got, messages = _run_two_ranks(image, text, gather_with_grad=False)
    expected_local = torch.cat([_local_rows_gradient(image, text, 0), _local_rows_gradient(image, text, 1)])
    torch.testing.assert_close(got, expected_local, rtol=1e-5, atol=1e-6)
    assert (got - _full_batch_gradient(image, text)).abs().max() > 1e-3  # what the docstring used to promise
    for rank_messages in messages:
        assert len(rank_messages) == 1 and "not the full-batch gradient" in rank_messages[0]
