"""Ignite metrics over a whole validation epoch of projection outputs, gathered across ranks in dataset order."""

from __future__ import annotations

import math

import torch
from common.engines.distributed import all_gather_rows
from common.metrics.embedding_quality import mean_recall_at_1, pair_auroc
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

__all__ = ["ProjectionValidationScore"]


class ProjectionValidationScore(Metric):
    """The model-selection score of the projection heads on the validation set.

    ``label_pairwise``: mean over modalities of the same-label pair AUROC; ``clip``: mean image↔text R@1;
    ``both``: the mean of the two. The engine output must be ``(outputs_dict, labels)``
    (``from_engine(["pred", "label"])`` on a MONAI evaluator with ``decollate=False``).
    """

    def __init__(
        self, objective: str = "label_pairwise", output_transform=lambda x: x, device: str | torch.device = "cpu"
    ) -> None:
        self.objective = objective
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._images: list[torch.Tensor] = []
        self._texts: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output) -> None:
        outputs, labels = output
        if "image_projection" in outputs:
            self._images.append(outputs["image_projection"].detach().float().cpu())
        if "text_projection" in outputs:
            self._texts.append(outputs["text_projection"].detach().float().cpu())
        if labels is not None:
            self._labels.append(torch.as_tensor(labels).detach().cpu())

    def _gathered(self, parts: list[torch.Tensor]) -> torch.Tensor | None:
        if not parts:
            return None
        return all_gather_rows(torch.cat(parts))

    def compute(self) -> float:
        images, texts, labels = self._gathered(self._images), self._gathered(self._texts), self._gathered(self._labels)
        scores = []
        if self.objective in ("label_pairwise", "both"):
            scores += [pair_auroc(z, labels) for z in (images, texts) if z is not None]
        if self.objective in ("clip", "both"):
            scores.append(mean_recall_at_1(images, texts))
        valid = [s for s in scores if not math.isnan(s)]
        return float(sum(valid) / len(valid)) if valid else float("nan")
