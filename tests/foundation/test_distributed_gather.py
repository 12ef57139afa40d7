"""The one cross-rank gather: uneven validation shards of two gloo ranks come back whole and in dataset order;
logging handlers run on rank 0 only."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from common.engines.distributed import all_gather_rows, interleave_shards, logging_on_rank_zero

NUM_ITEMS = 9  # odd: rank 0 holds 5 items, rank 1 holds 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, queue) -> None:
    from ignite.handlers import ProgressBar
    from monai.data import DataLoader, DistributedSampler
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = [{"x": torch.tensor([float(i), 10.0 * i]), "id": f"item_{i}"} for i in range(NUM_ITEMS)]
        sampler = DistributedSampler(data, shuffle=False, even_divisible=False)  # the overlays' validation sampler
        rows, ids = [], []
        for batch in DataLoader(data, batch_size=2, sampler=sampler):
            rows.append(batch["x"])
            ids.extend(batch["id"])
        local = torch.cat(rows)
        handlers = [
            "validation",
            StatsHandler(iteration_log=False),
            TensorBoardStatsHandler(summary_writer=object()),
            ProgressBar(),
            "saver",
        ]
        kept = [h if isinstance(h, str) else type(h).__name__ for h in logging_on_rank_zero(handlers)]
        queue.put((rank, len(local), all_gather_rows(local).tolist(), all_gather_rows(ids), kept))
    finally:
        torch.distributed.destroy_process_group()


def test_uneven_shards_of_two_ranks_are_gathered_in_dataset_order():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: rest for rank, *rest in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == 5 and results[1][0] == 4  # the shards really are uneven
    expected_rows = [[float(i), 10.0 * i] for i in range(NUM_ITEMS)]
    expected_ids = [f"item_{i}" for i in range(NUM_ITEMS)]
    for rank in (0, 1):  # every rank gets every row, in dataset order
        assert results[rank][1] == expected_rows
        assert results[rank][2] == expected_ids
    # rank 0 keeps every handler; the others drop the ones that log or show progress
    assert results[0][3] == ["validation", "StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "saver"]
    assert results[1][3] == ["validation", "saver"]


def test_one_process_gather_is_the_identity():
    rows = torch.arange(6).reshape(3, 2)
    assert all_gather_rows(rows) is rows
    assert all_gather_rows(("a", "b")) == ["a", "b"]


def test_interleave_restores_strided_order_and_refuses_other_splits():
    shards = [torch.tensor([0, 3, 6]), torch.tensor([1, 4]), torch.tensor([2, 5])]
    assert interleave_shards(shards).tolist() == list(range(7))
    assert interleave_shards([["a", "c"], ["b"]]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="even_divisible=False"):
        interleave_shards([torch.tensor([0]), torch.tensor([1, 2, 3])])  # not a strided split
