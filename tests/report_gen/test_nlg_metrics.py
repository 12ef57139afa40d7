"""NLG metrics against values worked out by hand, clinical metrics skipped without weights."""

from __future__ import annotations

import math

import pytest

from common.metrics.clinical_efficacy import clinical_efficacy_metrics
from common.metrics.nlg import java_available, nlg_metrics, nlg_tokenize


def test_one_tokenisation_for_all_scorers():
    assert nlg_tokenize("The  Heart, is NORMAL.\nNo effusion!") == "the heart is normal no effusion"


def test_short_hypothesis_hand_checked():
    # hypothesis: 4 words, all in order in the 6-word reference
    scores = nlg_metrics(["the heart is normal"], ["The heart is normal in size."], meteor=False)
    brevity = math.exp(1 - 6 / 4)  # every n-gram precision is 1, so BLEU-n is the brevity penalty alone
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(brevity, abs=1e-6)
    precision, recall, beta = 1.0, 4 / 6, 1.2  # COCO ROUGE-L: LCS = 4
    assert scores["ROUGE-L"] == pytest.approx((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    assert scores["METEOR"] == "skipped: disabled by configuration"


def test_corpus_bleu_and_cider_hand_checked():
    hyps = ["the heart is normal in size", "xyz abc"]
    refs = ["The heart is normal in size.", "no effusion seen here"]
    scores = nlg_metrics(hyps, refs, meteor=False)
    brevity = math.exp(1 - 10 / 8)  # corpus lengths: 8 generated words, 10 reference words
    assert scores["BLEU-1"] == pytest.approx(6 / 8 * brevity, abs=1e-6)
    # 4-gram precision 3/3, 3-gram 4/4, 2-gram 5/6, 1-gram 6/8
    assert scores["BLEU-4"] == pytest.approx((6 / 8 * 5 / 6 * 1 * 1) ** 0.25 * brevity, abs=1e-6)
    # CIDEr-D: the identical pair scores 10 (cosine 1, no length penalty), the disjoint pair 0
    assert scores["CIDEr"] == pytest.approx(5.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(0.5)
    assert scores["num_reports"] == 2


def test_full_length_reference_is_what_is_scored():
    long_ref = "the heart is normal in size the lungs are clear there is no pleural effusion or pneumothorax"
    hyp = "the heart is normal in size the lungs are clear"
    truncated_ref = " ".join(long_ref.split()[:10])
    assert nlg_metrics([hyp], [truncated_ref], meteor=False)["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    full = nlg_metrics([hyp], [long_ref], meteor=False)["BLEU-4"]
    assert full == pytest.approx(math.exp(1 - 17 / 10), abs=1e-6)  # the brevity penalty of the full reference


def test_empty_generation_scores_zero_not_crash():
    scores = nlg_metrics(["", "no effusion seen here"], ["the heart is normal", "no effusion seen here"], meteor=False)
    assert scores["ROUGE-L"] == pytest.approx(0.5)


def test_bad_input():
    with pytest.raises(ValueError, match="2 generated reports but 1 references"):
        nlg_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference 0 is empty"):
        nlg_metrics(["a"], ["  ..."])


@pytest.mark.skipif(not java_available(), reason="METEOR needs java on the PATH")
def test_meteor_with_java():
    exact = nlg_metrics(["the heart is normal in size"], ["The heart is normal in size."], meteor=True)["METEOR"]
    partial = nlg_metrics(["the heart is normal"], ["The heart is normal in size."], meteor=True)["METEOR"]
    assert 0.95 < exact <= 1.0
    assert 0.0 < partial < exact


def test_meteor_marked_skipped_without_java(monkeypatch):
    monkeypatch.setattr("common.metrics.nlg.shutil.which", lambda name: None)
    assert nlg_metrics(["a b"], ["a b"])["METEOR"].startswith("skipped: no java")


def test_clinical_metrics_skip_without_weights(tmp_path):
    result = clinical_efficacy_metrics(["no effusion"], ["no effusion"])
    assert result["CheXbert-F1"].startswith("skipped") and result["RadGraph-F1"].startswith("skipped")
    with pytest.raises(FileNotFoundError, match="CheXbert-F1 weights path"):
        clinical_efficacy_metrics(["a"], ["a"], chexbert_path=tmp_path / "missing.pth")


def test_clinical_metrics_use_the_local_weights_argument(tmp_path, monkeypatch):
    import sys
    import types

    weights = tmp_path / "chexbert.pth"
    weights.write_bytes(b"")
    seen = {}

    class FakeF1CheXbert:  # the shape of f1chexbert's scorer, recording what it is given
        def __init__(self, refs_filename=None, hyps_filename=None, chexbert_checkpoint=None):
            seen["checkpoint"] = chexbert_checkpoint

        def __call__(self, hyps, refs):
            report = {"micro avg": {"f1-score": 0.5}, "macro avg": {"f1-score": 0.25}}
            return 0.75, [], report, report

    monkeypatch.setitem(sys.modules, "f1chexbert", types.SimpleNamespace(F1CheXbert=FakeF1CheXbert))
    monkeypatch.setattr("common.metrics.clinical_efficacy.importlib.util.find_spec", lambda name: object())
    result = clinical_efficacy_metrics(["no effusion"], ["no effusion"], chexbert_path=weights)
    assert seen["checkpoint"] == str(weights)
    assert result["CheXbert-F1-14-micro"] == 0.5 and result["CheXbert-accuracy"] == 0.75
    assert result["RadGraph-F1"].startswith("skipped")
