"""CLEFT's classification metric only computes; the report writer, a handler, writes its eval files at the end."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine, Events

from common.methods.cleft.evaluation import ClassificationEvaluation
from common.methods.cleft.writers import ClassificationReportWriter

CLASSES = ["a", "b", "c"]


def _evaluator(probs: torch.Tensor, labels: torch.Tensor) -> Engine:
    batches = list(zip(probs.split(4), labels.split(4)))
    engine = Engine(lambda e, batch: {"pred": {"probs": batch[0]}, "label": batch[1]})
    engine.batches = batches
    return engine


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    probs = torch.nn.functional.one_hot(labels, 3).float() * 0.6 + 0.1
    probs[0] = torch.tensor([0.1, 0.8, 0.1])  # one mistake: accuracy 0.9
    return probs, labels


def test_metric_computes_the_report_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    probs, labels = _data()
    engine = _evaluator(probs, labels)
    ClassificationEvaluation(CLASSES, name="zero_shot").attach(engine, "test_zero_shot")
    engine.run(engine.batches, max_epochs=1)
    assert engine.state.metrics["test_zero_shot"] == pytest.approx(0.9)
    report = engine.state.metric_details["test_zero_shot"]
    assert report["num_samples"] == 10 and report["name"] == "zero_shot"
    assert report["confusion_matrix"][0] == [2, 1, 0]
    assert list(tmp_path.iterdir()) == []  # computing a metric writes no file


def test_report_writer_writes_the_metric_report_when_the_evaluator_completes(tmp_path):
    probs, labels = _data()
    engine = _evaluator(probs, labels)
    ClassificationEvaluation(CLASSES, name="zero_shot").attach(engine, "test_zero_shot")
    writer = ClassificationReportWriter(tmp_path, "test_zero_shot")
    writer.attach(engine)
    written_at_epoch_end = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: written_at_epoch_end.extend(tmp_path.iterdir()))
    engine.run(engine.batches, max_epochs=1)
    assert written_at_epoch_end == []  # the files come from the handler on COMPLETED, not from the metric
    report = json.loads((tmp_path / "zero_shot_metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(0.9) and report["class_names"] == CLASSES
    assert (tmp_path / "zero_shot_confusion_matrix.png").stat().st_size > 1000


def test_report_writer_names_a_metric_the_evaluator_does_not_have(tmp_path):
    probs, labels = _data()
    engine = _evaluator(probs, labels)
    ClassificationReportWriter(tmp_path, "val_zero_shot").attach(engine)
    with pytest.raises(KeyError, match="val_zero_shot"):
        engine.run(engine.batches, max_epochs=1)
