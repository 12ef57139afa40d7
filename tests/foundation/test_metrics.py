"""Metrics against hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.metrics.classification import classification_metrics
from common.metrics.embedding_quality import pair_auroc
from common.metrics.retrieval import bidirectional_retrieval, retrieval_recall_at_k


def test_binary_metrics_by_hand():
    # scores rank the positives (0.9, 0.4) above the negatives (0.3, 0.1) except 0.4 < 0.5 threshold
    result = classification_metrics([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.3])
    assert result["auroc"] == pytest.approx(1.0)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx(2 / 3)  # precision 1, recall 1/2


def test_multiclass_metrics_by_hand():
    y_true = [0, 1, 2, 1]
    scores = np.eye(3)[[0, 1, 2, 0]]  # the last sample is wrong
    result = classification_metrics(y_true, scores, class_names=["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(0.75)
    # per-class F1: a: P=1/2 R=1 -> 2/3; b: P=1 R=1/2 -> 2/3; c: 1
    assert result["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert set(result["per_class_auroc"]) == {"a", "b", "c"}


def test_metrics_reject_nan_scores_and_out_of_range_labels():
    with pytest.raises(ValueError, match="non-finite"):
        classification_metrics([0, 1], [0.2, float("nan")])
    with pytest.raises(ValueError, match="class ids"):
        classification_metrics([0, 3], np.eye(3)[[0, 1]])


def test_recall_at_k_by_hand():
    similarity = np.array(
        [
            [0.9, 0.1, 0.0],  # query 0: match ranked 1st
            [0.8, 0.5, 0.1],  # query 1: match ranked 2nd
            [0.7, 0.6, 0.2],  # query 2: match ranked 3rd
        ]
    )
    result = retrieval_recall_at_k(similarity, ks=(1, 2))
    assert result["R@1"] == pytest.approx(1 / 3)
    assert result["R@2"] == pytest.approx(2 / 3)
    assert result["median_rank"] == 2.0


def test_bidirectional_retrieval_is_perfect_for_identical_features():
    features = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    result = bidirectional_retrieval(features, features, ks=(1, 5))
    assert result["image_to_text_R@1"] == 1.0 and result["text_to_image_R@1"] == 1.0


def test_pair_auroc_separates_clusters():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0], [0.1, 0.9]])
    assert pair_auroc(clustered, labels) == pytest.approx(1.0)
