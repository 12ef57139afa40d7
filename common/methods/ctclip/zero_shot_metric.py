"""The key validation metric of ctclip_lora: mean zero-shot AUROC over pathologies, gathered across ranks."""

from __future__ import annotations

import math

import numpy as np
import torch
from common.engines.distributed import all_gather_rows
from common.metrics.classification import safe_roc_auc
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

__all__ = ["MeanZeroShotAUROC"]


class MeanZeroShotAUROC(Metric):
    """Mean over pathologies of the AUROC of P(present) (NaN pathologies, with one class only, left out).

    Expects the engine output of :class:`~common.methods.ctclip.zero_shot.ZeroShotIteration` (``output_transform``
    default picks ``pred`` (B, K) and ``label`` (B, K)). Under DDP every rank's rows are gathered in dataset order.
    """

    def __init__(
        self, output_transform=lambda out: (out["pred"], out["label"]), device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        if label is None:
            raise ValueError("zero-shot AUROC needs the pathology label columns in the validation data")
        self._preds.append(pred.detach().float().cpu())
        self._labels.append(label.detach().float().cpu())

    def compute(self) -> float:
        preds, labels = all_gather_rows(torch.cat(self._preds)), all_gather_rows(torch.cat(self._labels))
        aucs = [safe_roc_auc(labels[:, k].numpy(), preds[:, k].numpy()) for k in range(preds.shape[1])]
        valid = [a for a in aucs if not math.isnan(a)]
        return float(np.mean(valid)) if valid else float("nan")
