"""Preparing data once under ``torch.distributed``: rank 0 writes, the other ranks wait and then read."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["get_rank", "is_distributed", "rank_zero_first"]


def is_distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def get_rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


@contextmanager
def rank_zero_first() -> Iterator[bool]:
    """Run the body on rank 0 first, then on the other ranks (which then find its files ready).

    Yields True on rank 0. Single process: runs once, no waiting. Every rank must enter the block, or the
    barrier waits forever.
    """
    if is_distributed() and get_rank() != 0:
        torch.distributed.barrier()  # wait for rank 0 to finish the body
        yield False
        return
    try:
        yield True
    finally:
        if is_distributed():
            torch.distributed.barrier()  # release the other ranks
