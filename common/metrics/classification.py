"""Classification metrics (AUROC, F1, accuracy) computed by scikit-learn, for binary, multiclass and multilabel data."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

logger = logging.getLogger(__name__)

__all__ = ["classification_metrics", "safe_roc_auc"]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def safe_roc_auc(y_true: np.ndarray, y_score: np.ndarray, name: str = "") -> float:
    """Binary AUROC, or NaN with a warning when only one class is present (AUROC is undefined then)."""
    if len(np.unique(y_true)) < 2:
        logger.warning(
            "AUROC%s undefined: only one class present in y_true; reported as NaN", f" of {name}" if name else ""
        )
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def classification_metrics(
    y_true, y_score, class_names: Sequence[str] | None = None, threshold: float = 0.5
) -> dict[str, float | dict[str, float]]:
    """AUROC, F1 and accuracy for one prediction set.

    Args:
        y_true: binary (N,) in {0, 1}; multiclass (N,) class ids; or multilabel (N, C) multi-hot.
        y_score: binary (N,) positive-class scores or (N, 2); multiclass (N, C) probabilities;
            multilabel (N, C) per-label probabilities.
        class_names: names for per-class entries (multiclass and multilabel).
        threshold: decision threshold on scores for binary and multilabel F1/accuracy.

    Returns:
        ``{"auroc", "f1", "accuracy"}`` plus per-class AUROC under ``"per_class_auroc"`` where there are classes.
        Binary F1 is for the positive class; multiclass F1 is macro; multilabel F1 is macro over labels and
        accuracy is the mean per-label accuracy.
    """
    y_true = _to_numpy(y_true)
    y_score = _to_numpy(y_score).astype(np.float64)
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} rows but y_score has {len(y_score)}")
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    if not np.all(np.isfinite(y_score)):
        raise ValueError(f"y_score holds {int((~np.isfinite(y_score)).sum())} non-finite values (NaN or inf)")

    if y_true.ndim == 2:  # multilabel
        num_labels = y_true.shape[1]
        names = list(class_names) if class_names else [str(c) for c in range(num_labels)]
        per_class = {n: safe_roc_auc(y_true[:, c], y_score[:, c], n) for c, n in enumerate(names)}
        y_pred = (y_score >= threshold).astype(int)
        return {
            "auroc": (
                float(np.nanmean(list(per_class.values())))
                if any(not math.isnan(v) for v in per_class.values())
                else float("nan")
            ),
            "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float((y_pred == y_true).mean()),
            "per_class_auroc": per_class,
        }

    if y_score.ndim == 2 and y_score.shape[1] == 2 and (class_names is None or len(class_names) == 2):
        y_score = y_score[:, 1]
    if y_score.ndim == 1:  # binary
        y_pred = (y_score >= threshold).astype(int)
        return {
            "auroc": safe_roc_auc(y_true, y_score),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
        }

    num_classes = y_score.shape[1]
    names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} score columns")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes}), got [{y_true.min()}, {y_true.max()}]")
    y_pred = y_score.argmax(axis=1)
    per_class = {n: safe_roc_auc((y_true == c).astype(int), y_score[:, c], n) for c, n in enumerate(names)}
    valid = [v for v in per_class.values() if not math.isnan(v)]
    return {
        "auroc": float(np.mean(valid)) if valid else float("nan"),  # macro one-vs-rest over classes present
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class_auroc": per_class,
    }
