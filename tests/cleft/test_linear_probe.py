"""Linear probe at label fractions: seeded stratified subsets, learning on features with signal, bad input named."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics.linear_probe import label_fraction_indices, linear_probe


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    features = rng.normal(size=(n, 16))
    features[:, :4] += 3.0 * np.eye(4)[labels]  # class signal in 4 dimensions
    return features, labels


def test_subsets_are_stratified_reproducible_and_nested_in_size():
    _, labels = _data(400, 0)
    one = label_fraction_indices(labels, 0.01, seed=3)
    assert set(labels[one]) == {0, 1, 2, 3}  # at least one per class
    np.testing.assert_array_equal(one, label_fraction_indices(labels, 0.01, seed=3))
    assert len(one) < len(label_fraction_indices(labels, 0.1)) < len(label_fraction_indices(labels, 1.0)) == 400
    with pytest.raises(ValueError, match="label fraction"):
        label_fraction_indices(labels, 0.0)


def test_probe_learns_and_more_labels_help():
    train_x, train_y = _data(600, 1)
    test_x, test_y = _data(300, 2)
    results = linear_probe(train_x, train_y, test_x, test_y, class_names=["a", "b", "c", "d"])
    assert results["100%"]["accuracy"] > 0.8 and results["100%"]["auroc"] > 0.9
    assert results["100%"]["accuracy"] >= results["1%"]["accuracy"]
    shuffled = linear_probe(train_x, np.random.default_rng(0).permutation(train_y), test_x, test_y, fractions=(1.0,))
    assert shuffled["100%"]["accuracy"] < 0.4  # no signal, no learning


def test_length_mismatch_is_named():
    x, y = _data(20, 0)
    with pytest.raises(ValueError, match="features and labels differ"):
        linear_probe(x, y[:-1], x, y)
