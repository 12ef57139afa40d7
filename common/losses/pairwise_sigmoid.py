"""The label-aware pairwise sigmoid loss of Margaritis et al., arXiv 2502.02048 (official ``ContrastiveLoss``).

Every unordered pair ``(i, j), i < j`` of the batch is a binary example: target 1 when the two samples share a
label (multi-hot: a positive label, or both have none; see :func:`pair_targets`), 0 otherwise; logit
``<z_i, z_j> / T``; binary cross-entropy with logits, averaged over pairs. It pulls same-label samples together
and pushes different-label samples apart: supervised, label-aware, not CLIP pairing.

The official code uses raw dot products (no L2 normalisation) and no bias; both stay the default here so that
the paper's setting is reproduced, and ``normalize`` / ``bias`` / ``pos_weight`` (SigLIP-style) are options for
many-class data where negative pairs dominate.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from common.losses.temperature import check_temperature
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LabelAwarePairwiseSigmoidLoss", "pair_targets"]


def pair_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper-triangle pair indices and their same-label targets.

    The paper's target is label equality, ``y_i == y_j``. Multi-hot labels generalise it as: a pair is positive
    when the two samples share a positive label, **or when neither has any** (two all-negative rows, e.g. two
    "no finding" studies, carry the same label: "none"). This keeps the paper's binary task exact when it is
    given as one 0/1 column, (B, 1): ``0`` and ``0`` are the same label, so a positive pair.

    Args:
        labels: (B,) integer class ids, or (B, C) multi-hot labels.

    Returns:
        ``(i, j, target)``: index tensors of the ``B * (B - 1) / 2`` pairs and float targets in {0, 1}, each (P,).
    """
    batch = labels.shape[0]
    i, j = torch.triu_indices(batch, batch, offset=1, device=labels.device)
    if labels.ndim == 1:
        target = (labels[i] == labels[j]).float()
    elif labels.ndim == 2:
        positive = labels > 0
        share = (positive[i] & positive[j]).any(dim=1)
        both_empty = ~positive[i].any(dim=1) & ~positive[j].any(dim=1)
        target = (share | both_empty).float()
    else:
        raise ValueError(f"labels must be (B,) class ids or (B, C) multi-hot, got shape {tuple(labels.shape)}")
    return i, j, target


class LabelAwarePairwiseSigmoidLoss(nn.Module):
    """Pairwise BCE on same-label targets (arXiv 2502.02048, §2 of our method notes).

    Args:
        temperature: ``T`` in ``logit = <z_i, z_j> / T``; the paper's code uses 0.1.
        normalize: L2-normalise embeddings first (our option; the paper does not).
        bias: a constant added to every logit (SigLIP-style; the paper has none).
        pos_weight: weight of positive pairs in the BCE, for many-class data where negatives dominate.
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = False, bias: float = 0.0, pos_weight: float | None = None
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature, "temperature")
        self.normalize = normalize
        self.bias = bias
        self.pos_weight = pos_weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: embeddings (B, D); labels (B,) class ids or (B, C) multi-hot. Returns the scalar mean pair loss."""
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
        if embeddings.shape[0] < 2:
            raise ValueError("the pairwise loss needs at least 2 samples in a batch")
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        i, j, target = pair_targets(labels)
        logits = (embeddings[i] * embeddings[j]).sum(dim=-1) / self.temperature + self.bias
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
