"""The training objective of the projection heads, chosen in the config.

* ``label_pairwise``: the paper's label-aware pairwise sigmoid loss on each modality's projection (the heads
  are trained on the same labels; their losses are summed);
* ``clip``: symmetric InfoNCE between the image and text projections (LiT-style alignment for retrieval);
* ``both``: their sum.
"""

from __future__ import annotations

from typing import Mapping

import torch
from common.losses.clip_loss import ClipLoss
from common.losses.pairwise_sigmoid import LabelAwarePairwiseSigmoidLoss
from torch import nn

__all__ = ["ProjectionObjective", "OBJECTIVES"]

OBJECTIVES = ("label_pairwise", "clip", "both")


class ProjectionObjective(nn.Module):
    """Loss over the output dict of :class:`~common.methods.projection.heads.DualProjectionModel`.

    Args:
        objective: ``label_pairwise``, ``clip`` or ``both``.
        temperature: ``T`` of the pairwise loss (paper: 0.1).
        normalize: L2-normalise before the pairwise loss (paper: no).
        pos_weight: weight of positive pairs in the pairwise loss (None = paper).
        gather_with_grad: gather CLIP negatives across ranks with gradient under DDP.
    """

    def __init__(
        self,
        objective: str = "label_pairwise",
        temperature: float = 0.1,
        normalize: bool = False,
        pos_weight: float | None = None,
        gather_with_grad: bool = True,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.pairwise = LabelAwarePairwiseSigmoidLoss(
            temperature=temperature, normalize=normalize, pos_weight=pos_weight
        )
        self.clip = ClipLoss(gather_with_grad=gather_with_grad)

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        loss = outputs["logit_scale"].new_zeros(())
        if self.objective in ("label_pairwise", "both"):
            if labels is None:
                raise ValueError("the label_pairwise objective needs labels in the batch")
            for key in ("image_projection", "text_projection"):
                if key in outputs:
                    loss = loss + self.pairwise(outputs[key], labels)
        if self.objective in ("clip", "both"):
            if "image_projection" not in outputs or "text_projection" not in outputs:
                raise ValueError("the clip objective needs both image and text embeddings in the batch")
            loss = loss + self.clip(outputs["image_projection"], outputs["text_projection"], outputs["logit_scale"])
        return loss
