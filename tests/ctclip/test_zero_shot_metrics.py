"""Zero-shot metrics: scikit-learn agreement, the official threshold rule, held-out fitting, real bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from common.metrics.zero_shot import (
    bootstrap_confidence_intervals,
    fit_thresholds,
    threshold_metrics,
    zero_shot_metrics,
    zero_shot_report,
)


def _data(n=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, k))
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, size=(n, k)), 0, 1)
    return y, p


def _official_threshold(probabilities, labels):
    """The loop of CT-CLIP's scripts/eval.py, written out as reference."""
    best_threshold, best_roc = 0, 10000
    for threshold in np.linspace(0, 1, 100):
        predictions = (probabilities > threshold).astype(int)
        cm = confusion_matrix(labels, predictions, labels=[0, 1])
        tpr = cm[1, 1] / (cm[1, 1] + cm[1, 0])
        fpr = cm[0, 1] / (cm[0, 1] + cm[0, 0])
        roc = np.sqrt((1 - tpr) ** 2 + fpr**2)
        if roc <= best_roc:
            best_roc, best_threshold = roc, threshold
    return best_threshold


def test_thresholds_follow_the_official_rule():
    y, p = _data()
    ours = fit_thresholds(y, p)
    for k in range(y.shape[1]):
        assert ours[k] == pytest.approx(_official_threshold(p[:, k], y[:, k]))


def test_vectorised_metrics_equal_sklearn():
    y, p = _data()
    thr = np.array([0.3, 0.5, 0.7])
    got = threshold_metrics(y, p, thr)
    for k in range(3):
        pred = (p[:, k] > thr[k]).astype(int)
        assert got["accuracy"][k] == pytest.approx(accuracy_score(y[:, k], pred))
        assert got["weighted_f1"][k] == pytest.approx(f1_score(y[:, k], pred, average="weighted"))
        assert got["positive_f1"][k] == pytest.approx(f1_score(y[:, k], pred))


def test_metrics_reflect_signal():
    y, p = _data()
    good = zero_shot_metrics(y, p, ["a", "b", "c"])
    rng = np.random.default_rng(5)
    noise = zero_shot_metrics(y, rng.uniform(size=p.shape), ["a", "b", "c"])
    assert good["mean"]["auroc"] > 0.8
    assert noise["mean"]["auroc"] < 0.65
    assert set(good["per_pathology"]["a"]) >= {"auroc", "threshold", "accuracy", "weighted_f1", "positive_f1"}


def test_bootstrap_really_resamples():
    y, p = _data()
    ci = bootstrap_confidence_intervals(y, p, fit_thresholds(y, p), ["a", "b", "c"], num_samples=200)
    low, high = ci["mean"]["auroc"]
    point = zero_shot_metrics(y, p, ["a", "b", "c"])["mean"]["auroc"]
    assert low < point < high and high - low > 0.01
    assert ci["per_pathology"]["b"]["positive_f1"][0] < ci["per_pathology"]["b"]["positive_f1"][1]


def test_held_out_thresholds_differ_from_same_set():
    y, p = _data(seed=0)
    y_fit, p_fit = _data(seed=1)
    report = zero_shot_report(y, p, ["a", "b", "c"], y_fit, p_fit, num_bootstrap=0)
    assert report["protocol"] == "held_out_thresholds"
    held_out = [report["per_pathology"][c]["threshold"] for c in "abc"]
    assert np.allclose(held_out, fit_thresholds(y_fit, p_fit))
    assert not np.allclose(held_out, fit_thresholds(y, p))  # the thresholds differ from the same-set ones
    # the headline numbers are those at the held-out thresholds; the same-set ones are kept beside them
    held_out_mean = zero_shot_metrics(y, p, ["a", "b", "c"], fit_thresholds(y_fit, p_fit))["mean"]
    same_set_mean = zero_shot_metrics(y, p, ["a", "b", "c"])["mean"]
    assert report["mean"] == pytest.approx(held_out_mean)
    assert report["same_set_protocol_mean"] == pytest.approx(same_set_mean)
    assert report["mean"]["auroc"] == pytest.approx(same_set_mean["auroc"])  # threshold-free
    assert report["mean"]["weighted_f1"] != pytest.approx(same_set_mean["weighted_f1"])


def test_bad_input_is_named():
    y, p = _data()
    with pytest.raises(ValueError, match="same"):
        zero_shot_metrics(y, p[:, :2], ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        zero_shot_metrics(y, p, ["a"])
    p_nan = p.copy()
    p_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        zero_shot_metrics(y, p_nan, ["a", "b", "c"])
