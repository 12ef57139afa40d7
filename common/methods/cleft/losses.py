"""CLEFT losses in the house form ``loss(output_dict, targets) -> scalar``.

Stage 1 is CLIP's symmetric InfoNCE on the network's ``image_features``/``text_features`` (negatives gathered
across ranks under DDP), as the official CLEFT code sums it: ``CE(image->text) + CE(text->image)`` (twice CLIP's
mean; checked against the official loss in ``tests/cleft/test_cleft_parity.py``). Stage 2 is cross-entropy over the
K class prompts' ``logits``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from common.losses.clip_loss import ClipLoss
from torch import nn

__all__ = ["CLEFTContrastiveLoss", "PromptClassificationLoss"]


class CLEFTContrastiveLoss(nn.Module):
    """Symmetric InfoNCE, the SUM of both directions (official CLEFT), on a CLEFT output dict; ``targets`` is unused.

    Args:
        gather_with_grad: see :class:`~common.losses.clip_loss.ClipLoss`.
        chunk_size: rows of the similarity matrix scored at a time (None or 0: all at once); with the gradient
            cache, its chunk size, so that the loss over a large batch never holds the ``(B, B)`` logits.
    """

    def __init__(self, gather_with_grad: bool = True, chunk_size: int | None = None) -> None:
        super().__init__()
        # features come normalised
        self.clip_loss = ClipLoss(gather_with_grad=gather_with_grad, normalize=False, chunk_size=chunk_size)

    def forward(self, output: Mapping[str, torch.Tensor], targets: object = None) -> torch.Tensor:
        # ClipLoss returns the mean of the two cross-entropies; the official CLEFT loss is their sum
        return 2.0 * self.clip_loss(output["image_features"], output["text_features"], output["logit_scale"])


class PromptClassificationLoss(nn.Module):
    """Cross-entropy of ``output["logits"]`` ``(B, K)`` against class indices ``targets`` ``(B,)``."""

    def forward(self, output: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if targets is None:
            raise ValueError("prompt tuning needs class labels: the batch has no 'label' targets")
        return F.cross_entropy(output["logits"], targets.long())
