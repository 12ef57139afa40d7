"""``prepare_batch`` callables for MONAI's SupervisedTrainer / SupervisedEvaluator.

House pattern: the network takes the whole batch dict (on the device) and returns a dict; the loss takes that
dict and the targets. So ``prepare_batch`` moves every tensor of the batch to the device and splits off the
targets; the engine then calls ``network(batch)`` and ``loss(outputs, targets)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["PrepareDictBatch"]


class PrepareDictBatch:
    """Move a dict batch to the device; return ``(batch_dict, targets)``.

    Args:
        target_key: the batch key that holds the targets (None: no targets, e.g. CLIP pairs).
        keys: keep only these keys in the batch dict (None keeps all tensors and lists).
    """

    def __init__(self, target_key: str | None = "label", keys: Sequence[str] | None = None) -> None:
        self.target_key = target_key
        self.keys = list(keys) if keys else None

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ):
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"expected a dict batch, got {type(batchdata).__name__}")
        wanted = self.keys or list(batchdata)
        missing = [k for k in wanted if k not in batchdata]
        if missing:
            raise KeyError(f"batch lacks key(s) {missing}; it has {sorted(batchdata)}")
        batch = {
            k: (
                batchdata[k].to(device=device, non_blocking=non_blocking)
                if isinstance(batchdata[k], torch.Tensor)
                else batchdata[k]
            )
            for k in wanted
        }
        targets = None
        if self.target_key is not None:
            if self.target_key not in batchdata:
                raise KeyError(f"batch lacks the target key '{self.target_key}'; it has {sorted(batchdata)}")
            targets = torch.as_tensor(batchdata[self.target_key]).to(device=device, non_blocking=non_blocking)
        return batch, targets
