"""Minimum split sizes are checked before any work, naming the split, its size, the minimum and what to do."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.split_sizes import SplitSizeError, require_both_classes
from common.methods.projection.downstream_evaluation import evaluate_projection
from common.methods.projection.heads import DualProjectionModel


def _rows(n: int, split: str, labels: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "image_embedding": rng.normal(size=8).astype("float32"),
            "text_embedding": rng.normal(size=8).astype("float32"),
            "label": labels[i % len(labels)],
            "split": split,
            "manifest": "/data/m.csv",
        }
        for i in range(n)
    ]


@pytest.fixture
def model():
    return DualProjectionModel(image_dim=8, text_dim=8, hidden_dim=8, out_dim=4)


def test_a_two_row_test_split_is_refused_before_scoring(model, tmp_path):
    """Before, scikit-learn failed inside the probe ("y_true is binary while y_score is 2d ...")."""
    table = _rows(20, "train", [0, 1, 2]) + _rows(2, "test", [0, 1], seed=1)
    with pytest.raises(SplitSizeError) as err:
        evaluate_projection(model, table, tmp_path, class_names=["a", "b", "c"], retrieval_ks=[1, 5, 10])
    assert str(err.value).startswith("/data/m.csv: the 'test' split has 2 row(s); retrieval R@10 (retrieval_ks)")
    assert "needs at least 10" in str(err.value)
    assert not (tmp_path / "metrics.json").exists()


def test_a_one_class_train_split_is_refused(model, tmp_path):
    table = _rows(20, "train", [1]) + _rows(12, "test", [0, 1], seed=1)
    with pytest.raises(SplitSizeError, match=r"the 'train' split has 20 row\(s\) and no label with both classes"):
        evaluate_projection(model, table, tmp_path, class_names=["a", "b"], retrieval_ks=[1, 5, 10])


def test_splits_of_the_minimum_size_are_scored(model, tmp_path):
    table = _rows(20, "train", [0, 1, 2]) + _rows(10, "test", [0, 1], seed=1)
    results = evaluate_projection(model, table, tmp_path, class_names=["a", "b", "c"], retrieval_ks=[1, 5, 10])
    assert results["num_test"] == 10 and (tmp_path / "metrics.json").is_file()


def test_a_validation_split_without_both_classes_names_the_label_counts():
    rows = [{"Lung nodule": 1, "Emphysema": 0, "manifest": "/data/ct.csv"}] * 3
    with pytest.raises(SplitSizeError) as err:
        require_both_classes(rows, "val", ["Lung nodule", "Emphysema"], "the validation AUROC")
    assert (
        "the 'val' split has 3 row(s) and no label with both classes (Lung nodule: {1: 3}; Emphysema: {0: 3})"
        in str(err.value)
    )
    assert require_both_classes(rows + [{"Lung nodule": 0, "Emphysema": 0}], "val", ["Lung nodule"])
