"""Linear probing of frozen image features with scikit-learn logistic regression at 1, 10 and 100% of the labels.

The CLEFT paper (Du et al., MICCAI 2024) reports linear probes at 1/10/100% label fractions; its code ships no
probe script or subset lists. Here the subsets are fixed by a seed and stratified, with at least one sample per
class, so a run is reproducible and each fraction's subset is written next to its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from common.metrics.classification import classification_metrics
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)

__all__ = ["label_fraction_indices", "linear_probe"]


def label_fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of ``labels`` (N,), at least one per class present."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    max_iter: int = 2000,
    regularization: float = 1.0,
) -> dict[str, dict]:
    """Fit standardised logistic regression on each label fraction of the training features; score the test set.

    Args:
        train_features: ``(N_train, D)``; train_labels: ``(N_train,)`` class ids.
        test_features: ``(N_test, D)``; test_labels: ``(N_test,)``.
        fractions: label fractions (1%, 10%, 100% in the paper).
        class_names: names of the class ids (all classes, in id order).
        seed: fixes the subsets.
        max_iter, regularization: ``LogisticRegression(max_iter, C=regularization)``.

    Returns:
        ``{"1%": {"accuracy", "auroc", "f1", "per_class_auroc", "num_train", "train_indices"}, ...}``.
    """
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels).astype(int), np.asarray(test_labels).astype(int)
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError(
            f"features and labels differ in length: train {train_features.shape[0]} vs {train_labels.shape[0]}, "
            f"test {test_features.shape[0]} vs {test_labels.shape[0]}"
        )
    num_classes = len(class_names) if class_names else int(max(train_labels.max(), test_labels.max())) + 1
    results = {}
    for fraction in fractions:
        subset = label_fraction_indices(train_labels, fraction, seed)
        key = f"{fraction * 100:g}%"
        if len(np.unique(train_labels[subset])) < 2:
            logger.warning("linear probe at %s: fewer than 2 classes in %d samples; skipped", key, len(subset))
            results[key] = {"skipped": "fewer than 2 classes", "num_train": len(subset)}
            continue
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=max_iter, C=regularization, random_state=seed)
        )
        probe.fit(train_features[subset], train_labels[subset])
        scores = np.zeros((len(test_labels), num_classes))
        scores[:, probe.classes_] = probe.predict_proba(test_features)  # classes absent from the subset score 0
        metrics = classification_metrics(test_labels, scores, class_names=class_names)
        results[key] = {**metrics, "num_train": len(subset), "train_indices": subset.tolist()}
        logger.info(
            "linear probe %s (%d labels): accuracy %.3f AUROC %.3f",
            key,
            len(subset),
            metrics["accuracy"],
            metrics["auroc"],
        )
    return results
