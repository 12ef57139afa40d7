"""CLEFT optimiser wiring: AdamW parameter groups without weight decay on 1-D parameters.

The official code (``utils_mae/lr_decay.param_groups_lrd_moco``) skips weight decay for biases, norms and the
logit scale; this is that rule without its dead per-layer ``lr_scale`` and its unconditional ``dist.get_rank()``.
"""

from __future__ import annotations

import torch

__all__ = ["param_groups_no_decay_1d"]


def param_groups_no_decay_1d(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters: ``ndim >= 2`` with ``weight_decay``, the rest (biases, norms,
    scalars) without. Frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError(f"{type(model).__name__} has no trainable parameters: nothing to optimise")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
