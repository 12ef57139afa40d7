"""CLEFT eval files, written by rank 0 from Ignite handlers: classification reports with a confusion-matrix plot,
and the class probabilities of an inference run.

Every file is written atomically (``common.data.atomic_io``): ``<name>_metrics.json`` (accuracy, macro AUROC,
macro F1, per-class AUROC, confusion matrix, counts) and ``<name>_confusion_matrix.png`` under the bundle's ``eval/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
from common.data.atomic_io import atomic_path, write_json_atomic
from common.engines.distributed import all_gather_rows
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["ClassProbabilityWriter", "ClassificationReportWriter", "plot_confusion_matrix"]


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save a ``(K, K)`` confusion matrix (rows: truth, columns: prediction) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


class ClassificationReportWriter:
    """Evaluator handler: on ``COMPLETED``, rank 0 writes the report of a
    :class:`~common.methods.cleft.evaluation.ClassificationEvaluation` to ``output_dir``.

    The metric leaves its report in ``engine.state.metric_details[metric_name]``; this writes
    ``<report name>_metrics.json`` and ``<report name>_confusion_matrix.png``.

    Args:
        output_dir: the bundle's ``eval/`` folder.
        metric_name: the metric's key in the evaluator's ``key_val_metric`` / ``additional_metrics``.
    """

    def __init__(self, output_dir: str | Path, metric_name: str) -> None:
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        report = (getattr(engine.state, "metric_details", None) or {}).get(self.metric_name)
        if report is None:
            raise KeyError(
                f"ClassificationReportWriter: the evaluator has no report of metric {self.metric_name!r}; "
                "set metric_name to the key of a ClassificationEvaluation in its key_val_metric"
            )
        if idist.get_rank() != 0:
            return
        name = report["name"]
        write_json_atomic(report, self.output_dir / f"{name}_metrics.json")
        plot_confusion_matrix(
            np.asarray(report["confusion_matrix"]),
            report["class_names"],
            self.output_dir / f"{name}_confusion_matrix.png",
            title=f"{name}: accuracy {report['accuracy']:.3f}, AUROC {report['auroc']:.3f}",
        )
        logger.info("wrote %s report to %s", name, self.output_dir)


class ClassProbabilityWriter:
    """Ignite handler for inference: collects each image's class probabilities and writes one JSON at the end.

    Output ``{"class_names": [...], "predictions": [{"image": path, "probabilities": {name: p}, "prediction": name}]}``.
    """

    def __init__(self, class_names: Sequence[str], output_path: str | Path, image_key: str = "image") -> None:
        self.class_names = list(class_names)
        self.output_path = Path(output_path)
        self.image_key = image_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        probs = output["pred"]["probs"].detach().float().cpu()
        meta = getattr(engine.state.batch.get(self.image_key), "meta", {}) or {}
        names = meta.get("filename_or_obj", [""] * len(probs))
        for name, row in zip(names, probs.tolist()):
            scores = dict(zip(self.class_names, row))
            self.rows.append({"image": str(name), "probabilities": scores, "prediction": max(scores, key=scores.get)})

    def _write(self, engine: Engine) -> None:
        rows = all_gather_rows(self.rows)  # every rank's images, in input order
        if idist.get_rank() == 0:
            write_json_atomic({"class_names": self.class_names, "predictions": rows}, self.output_path)
            logger.info("wrote %d predictions to %s", len(rows), self.output_path)
