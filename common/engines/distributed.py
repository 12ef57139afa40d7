"""The one cross-rank gather of metrics and writers: every rank's rows, in dataset order, on every rank.

Under DDP the validation and evaluation loaders use MONAI's ``DistributedSampler(shuffle=False,
even_divisible=False)``: rank ``r`` of ``W`` holds dataset items ``r, r + W, r + 2W, ...``, so ranks hold different
numbers of rows (9 items on 2 ranks: 5 and 4) and a plain ``all_gather`` of per-rank tensors fails (gloo:
``size doesn't match``; NCCL may hang). :func:`all_gather_rows` pads to the longest shard and gathers
(``monai.utils.evenly_divisible_all_gather``; picklable rows through ``ignite.distributed.all_gather``), then
interleaves the shards back, so row ``i`` of the result is dataset item ``i``: metrics and written prediction files
equal the one-process run's, row for row.

:func:`logging_on_rank_zero` is the multi-GPU overlays' rank-0-only rule for handlers. Rank checks go through
``ignite.distributed`` (``idist.get_rank()``, ``idist.get_world_size()``, ``idist.one_rank_first()``), which reads
an initialised ``torch.distributed`` process group and is rank 0 of 1 without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
from monai.utils import evenly_divisible_all_gather

__all__ = ["all_gather_rows", "interleave_shards", "logging_on_rank_zero"]

Rows = TypeVar("Rows", torch.Tensor, list)


def interleave_shards(shards: Sequence[torch.Tensor | Sequence[Any]]) -> torch.Tensor | list[Any]:
    """Put the shards of a strided split back in dataset order: shard ``r`` holds items ``r, r + W, ...``.

    Args:
        shards: ``W`` shards in rank order, tensors ``(N_r, ...)`` or sequences of ``N_r`` rows.

    Returns:
        ``(N, ...)`` tensor (or list of ``N`` rows), ``N = sum(N_r)``, row ``i`` = dataset item ``i``.

    Raises:
        ValueError: shard lengths that no strided split gives (a shuffled, padded or custom sampler): the gathered
            rows could not be put back in dataset order.
    """
    world = len(shards)
    lengths = [len(s) for s in shards]
    total = sum(lengths)
    expected = [len(range(r, total, world)) for r in range(world)]
    if lengths != expected:
        raise ValueError(
            f"the {world} ranks hold {lengths} rows, but an unshuffled, unpadded split of {total} rows gives "
            f"{expected}: the validation/evaluation loader must use DistributedSampler(dataset, shuffle=False, "
            "even_divisible=False), as the bundles' multi_gpu_*.json overlays set"
        )
    if isinstance(shards[0], torch.Tensor):
        out = shards[0].new_empty((total, *shards[0].shape[1:]))
        for rank, shard in enumerate(shards):
            out[rank::world] = shard.to(out.device)
        return out
    rows: list[Any] = [None] * total
    for rank, shard in enumerate(shards):
        rows[rank::world] = list(shard)
    return rows


def all_gather_rows(rows: Rows) -> Rows:
    """Every rank's rows on every rank, in dataset order; the identity (a list for a sequence) in one process.

    Args:
        rows: this rank's ``(N_r, ...)`` tensor (same dtype and trailing shape on every rank), or a list of ``N_r``
            picklable rows (ids, records). Every rank must call this, in the same order.

    Returns:
        ``(N, ...)`` tensor or list of ``N`` rows, ``N = sum over ranks of N_r``, row ``i`` = dataset item ``i``.

    Raises:
        ValueError: ranks whose row counts are not those of a ``DistributedSampler(shuffle=False,
            even_divisible=False)`` split (see :func:`interleave_shards`).
    """
    if idist.get_world_size() <= 1:
        return rows if isinstance(rows, torch.Tensor) else list(rows)
    if isinstance(rows, torch.Tensor):
        shards = evenly_divisible_all_gather(rows, concat=False)
    else:
        shards = idist.all_gather(list(rows))
    return interleave_shards(shards)


def _logging_handler_types() -> tuple[type, ...]:
    from ignite.handlers import ProgressBar
    from monai.handlers import StatsHandler, TensorBoardImageHandler, TensorBoardStatsHandler

    return (StatsHandler, TensorBoardStatsHandler, TensorBoardImageHandler, ProgressBar)


def logging_on_rank_zero(handlers: Sequence[Any]) -> list[Any]:
    """This rank's handlers: all of them on rank 0; on the other ranks, all but those that log or show progress.

    Log lines, TensorBoard events and progress bars come once, from rank 0. Every other handler stays on every
    rank: the validation handler (every rank evaluates its shard; the metric gathers them), the evaluation writers
    (they gather, then rank 0 writes) and the checkpoint handlers (they write on rank 0 themselves).

    Args:
        handlers: a trainer's or evaluator's handler list, as the bundle's ``train.json`` builds it.

    Returns:
        The handlers to attach on this rank, in their order.
    """
    if idist.get_rank() == 0:
        return list(handlers)
    logging_types = _logging_handler_types()
    return [h for h in handlers if not isinstance(h, logging_types)]
