"""Zero-shot multi-pathology metrics with the conventions of CT-CLIP and MedCT-VLM, and real bootstrap CIs.

Protocol of CT-CLIP (arXiv 2403.17834, ``scripts/eval.py``): per pathology, AUROC of P(present); a threshold
chosen among ``linspace(0, 1, 100)`` as the point whose (FPR, TPR) lies closest to the ROC corner (0, 1);
accuracy and **weighted** F1 at that threshold; means over pathologies. MedCT-VLM (arXiv 2512.00597) reports a
"macro-F1" that is the **positive-class** F1 averaged over pathologies; both are given here.

Differences from the official code, on purpose:
- thresholds can be fitted on a held-out split (``fit_*`` arguments) instead of on the evaluated set itself
  (the official same-set protocol remains available: pass no fit split);
- the bootstrap really resamples the evaluated cases with replacement (the official loop draws indices but
  never uses them, so its "confidence interval" has zero width).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from common.metrics.classification import safe_roc_auc
from sklearn.metrics import accuracy_score, f1_score

logger = logging.getLogger(__name__)

__all__ = [
    "CT_RATE_PATHOLOGIES",
    "bootstrap_confidence_intervals",
    "fit_thresholds",
    "threshold_metrics",
    "zero_shot_metrics",
    "zero_shot_report",
]

#: The 18 CT-RATE label columns, in the order of ``multi_abnormality_labels/*_predicted_labels.csv``.
CT_RATE_PATHOLOGIES: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

_THRESHOLD_GRID = np.linspace(0.0, 1.0, 100)


def _as_2d(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    def to_np(x):
        return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)

    y_true, y_prob = to_np(y_true), to_np(y_prob)
    if y_true.ndim == 1:
        y_true, y_prob = y_true[:, None], y_prob[:, None]
    if y_true.shape != y_prob.shape:
        raise ValueError(f"labels {y_true.shape} and probabilities {y_prob.shape} must have the same (N, K) shape")
    if not np.isfinite(y_prob).all():
        raise ValueError(f"probabilities hold {int((~np.isfinite(y_prob)).sum())} non-finite values")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (rows with unknown labels must be removed first)")
    return y_true.astype(int), y_prob


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Counts along axis 0. Args: (N, ...) int arrays. Returns tp, fp, fn, tn, each (...)."""
    tp = ((y_pred == 1) & (y_true == 1)).sum(0)
    fp = ((y_pred == 1) & (y_true == 0)).sum(0)
    fn = ((y_pred == 0) & (y_true == 1)).sum(0)
    tn = ((y_pred == 0) & (y_true == 0)).sum(0)
    return tp, fp, fn, tn


def fit_thresholds(y_true, y_prob) -> np.ndarray:
    """CT-CLIP's threshold per pathology: the grid value whose (FPR, 1 - TPR) is nearest (0, 0).

    Predictions are ``prob > threshold``; ties go to the larger threshold (the official ``<=`` update).

    Args: y_true, y_prob (N, K). Returns thresholds (K,).
    """
    y_true, y_prob = _as_2d(y_true, y_prob)
    preds = (y_prob[None] > _THRESHOLD_GRID[:, None, None]).astype(int)  # (T, N, K)
    tp, fp, fn, tn = _confusion_counts(np.broadcast_to(y_true, preds.shape).swapaxes(0, 1), preds.swapaxes(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / (tp + fn)
        fpr = fp / (fp + tn)
    distance = np.sqrt((1 - tpr) ** 2 + fpr**2)  # (T, K)
    distance = np.where(np.isnan(distance), np.inf, distance)
    best = len(_THRESHOLD_GRID) - 1 - np.argmin(distance[::-1], axis=0)  # last minimum = official tie rule
    return _THRESHOLD_GRID[best]


def threshold_metrics(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, weighted F1, positive-class F1 at fixed thresholds, vectorised over a leading resample axis.

    Args: y_true, y_prob (..., N, K); thresholds (K,). Returns arrays of shape (..., K). Equal to scikit-learn's
    ``accuracy_score`` and ``f1_score`` (``average="weighted"`` / ``"binary"``, zero_division 0); see tests.
    """
    y_pred = (y_prob > thresholds).astype(int)
    tp, fp, fn, tn = _confusion_counts(np.moveaxis(y_true, -2, 0), np.moveaxis(y_pred, -2, 0))
    n = tp + fp + fn + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_pos = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        f1_neg = np.nan_to_num(2 * tn / (2 * tn + fp + fn))
    n_pos, n_neg = tp + fn, tn + fp
    return {"accuracy": (tp + tn) / n, "weighted_f1": (n_pos * f1_pos + n_neg * f1_neg) / n, "positive_f1": f1_pos}


def zero_shot_metrics(y_true, y_prob, class_names: Sequence[str], thresholds=None) -> dict:
    """Per-pathology and mean AUROC, accuracy, weighted F1, positive-class F1, computed by scikit-learn.

    Args:
        y_true: (N, K) 0/1 labels.
        y_prob: (N, K) P(present).
        class_names: K pathology names.
        thresholds: (K,) decision thresholds; default: fitted on this same set (the official protocol).

    Returns:
        ``{"per_pathology": {name: {...}}, "mean": {...}, "n": N}``; AUROC is NaN (and left out of the mean)
        for a pathology with one class only.
    """
    y_true, y_prob = _as_2d(y_true, y_prob)
    if len(class_names) != y_true.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {y_true.shape[1]} label columns")
    thresholds = fit_thresholds(y_true, y_prob) if thresholds is None else np.asarray(thresholds, dtype=float)
    per: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        t, p = y_true[:, k], y_prob[:, k]
        pred = (p > thresholds[k]).astype(int)
        per[name] = {
            "auroc": safe_roc_auc(t, p, name),
            "threshold": float(thresholds[k]),
            "accuracy": float(accuracy_score(t, pred)),
            "weighted_f1": float(f1_score(t, pred, average="weighted", zero_division=0)),
            "positive_f1": float(f1_score(t, pred, average="binary", pos_label=1, zero_division=0)),
            "num_positive": int(t.sum()),
            "num_cases": len(t),
        }
    keys = ("auroc", "accuracy", "weighted_f1", "positive_f1")
    mean = {k: float(np.nanmean([v[k] for v in per.values()])) for k in keys}
    return {"per_pathology": per, "mean": mean, "n": int(y_true.shape[0])}


def bootstrap_confidence_intervals(
    y_true,
    y_prob,
    thresholds,
    class_names: Sequence[str],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap CIs that resample the cases (rows) with replacement, thresholds held fixed.

    Returns ``{"per_pathology": {name: {metric: [low, high]}}, "mean": {metric: [low, high]}, "num_samples": B}``.
    """
    y_true, y_prob = _as_2d(y_true, y_prob)
    if num_samples < 1:
        raise ValueError(f"bootstrap num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    n, k = y_true.shape
    idx = rng.integers(0, n, size=(num_samples, n))
    t_b, p_b = y_true[idx], y_prob[idx]  # (B, N, K)
    stats = threshold_metrics(t_b, p_b, np.asarray(thresholds, dtype=float))
    auroc = np.full((num_samples, k), np.nan)
    for b in range(num_samples):
        for j in range(k):
            if 0 < t_b[b, :, j].sum() < n:
                auroc[b, j] = safe_roc_auc(t_b[b, :, j], p_b[b, :, j])
    stats["auroc"] = auroc
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    per = {name: {} for name in class_names}
    mean: dict[str, list[float]] = {}
    with np.errstate(all="ignore"):
        for metric, values in stats.items():
            for j, name in enumerate(class_names):
                per[name][metric] = [
                    float(np.nanpercentile(values[:, j], lo)),
                    float(np.nanpercentile(values[:, j], hi)),
                ]
            means = np.nanmean(values, axis=1)
            mean[metric] = [float(np.nanpercentile(means, lo)), float(np.nanpercentile(means, hi))]
    return {"per_pathology": per, "mean": mean, "num_samples": num_samples, "confidence": confidence}


def zero_shot_report(
    y_true,
    y_prob,
    class_names: Sequence[str],
    fit_y_true=None,
    fit_y_prob=None,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything the evaluation writes: metrics at thresholds fitted on the fit split (or, without one, on the
    evaluated set as CT-CLIP does), the same-set numbers for comparison, and bootstrap CIs."""
    if (fit_y_true is None) != (fit_y_prob is None):
        raise ValueError("give both fit_y_true and fit_y_prob, or neither")
    protocol = "held_out_thresholds" if fit_y_true is not None else "same_set_thresholds"
    thresholds = fit_thresholds(fit_y_true, fit_y_prob) if fit_y_true is not None else fit_thresholds(y_true, y_prob)
    report = zero_shot_metrics(y_true, y_prob, class_names, thresholds)
    report["protocol"] = protocol
    if protocol == "held_out_thresholds":
        report["same_set_protocol_mean"] = zero_shot_metrics(y_true, y_prob, class_names)["mean"]
    if num_bootstrap > 0:
        report["bootstrap"] = bootstrap_confidence_intervals(
            y_true, y_prob, thresholds, class_names, num_bootstrap, seed=seed
        )
    return report
