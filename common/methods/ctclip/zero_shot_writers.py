"""ctclip_lora's eval files, written by rank 0 from Ignite handlers, every file atomically.

- :class:`ZeroShotCollector` - collects one evaluator run's ids, probabilities, labels and latents; under DDP every
  rank's rows are gathered in dataset order.
- :class:`ZeroShotEvalWriter` - per-pathology CSV/JSON, predictions, ROC plots and report-to-volume retrieval.
- :class:`ZeroShotJSONWriter` - inference: one JSON of probabilities per volume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from common.data.atomic_io import write_bytes_atomic
from common.engines.distributed import all_gather_rows
from common.methods.ctclip.inputs import check_pathology_names
from common.metrics.retrieval import retrieval_recall_at_k
from common.metrics.zero_shot import zero_shot_report
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["ZeroShotCollector", "ZeroShotEvalWriter", "ZeroShotJSONWriter"]


class ZeroShotCollector:
    """Collects one evaluator run's ids, probabilities, labels and latents; gathers them in dataset order."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self.ids: list[str] = []
        self.parts: dict[str, list[torch.Tensor]] = {"pred": [], "label": [], "image_latents": [], "text_latents": []}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def update(self, engine: Engine) -> None:
        out = engine.state.output
        self.ids.extend(out.get("id", []))
        for key in self.parts:
            if out.get(key) is not None:
                self.parts[key].append(out[key].detach().float().cpu())

    def arrays(self) -> dict[str, np.ndarray]:
        """Every rank's results, ``(N, ...)`` in dataset order; keys present only where every batch had them.

        Every rank must call it (it gathers).
        """
        return {key: all_gather_rows(torch.cat(parts)).numpy() for key, parts in self.parts.items() if parts}

    def gathered_ids(self) -> list[str]:
        """Every rank's ids, in dataset order (every rank must call it)."""
        return all_gather_rows(self.ids)


class ZeroShotEvalWriter(ZeroShotCollector):
    """Writes the evaluation of a run to ``output_dir``: every rank gathers, rank 0 scores and writes atomically.

    Files: ``zero_shot_metrics.json`` (per-pathology and mean AUROC, accuracy, weighted F1, positive-class F1,
    thresholds, bootstrap CIs, protocol, retrieval), ``zero_shot_per_pathology.csv``, ``zero_shot_predictions.csv``,
    ``roc_curves.png``.

    Args:
        output_dir: the bundle's ``eval/`` folder.
        class_names: the pathologies, in the order of the label columns.
        fit_collector: a :class:`ZeroShotCollector` that ran on the held-out split whose predictions fit the
            thresholds; None uses the evaluated set itself (CT-CLIP's same-set protocol).
        num_bootstrap: bootstrap resamples for the CIs (0 skips them).
        retrieval_ks: R@K of report-to-volume retrieval (when reports were encoded).
        seed: bootstrap seed.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        fit_collector: ZeroShotCollector | None = None,
        num_bootstrap: int = 1000,
        retrieval_ks: Sequence[int] = (5, 10, 50, 100),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.class_names = check_pathology_names(class_names)
        self.fit_collector = fit_collector
        self.num_bootstrap = num_bootstrap
        self.retrieval_ks = tuple(retrieval_ks)
        self.seed = seed
        self.report: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def compute(self, data: dict[str, np.ndarray], fit: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The report of gathered ``data`` (see :meth:`arrays`), thresholds fitted on ``fit`` (None: on ``data``)."""
        if "label" not in data:
            raise ValueError("zero-shot evaluation needs the pathology label columns in the evaluated manifest")
        fit_true = fit_prob = None
        if fit is not None:
            if "label" not in fit:
                raise ValueError("the threshold-fitting split produced no labels")
            fit_true, fit_prob = fit["label"], fit["pred"]
        report = zero_shot_report(
            data["label"], data["pred"], self.class_names, fit_true, fit_prob, self.num_bootstrap, self.seed
        )
        if "text_latents" in data:
            similarity = torch.from_numpy(data["text_latents"] @ data["image_latents"].T)  # report -> volume
            ks = [k for k in self.retrieval_ks if k <= similarity.shape[1]] or [similarity.shape[1]]
            report["report_to_volume_retrieval"] = retrieval_recall_at_k(similarity, ks=ks)
        return report

    def write(self, engine: Engine | None = None) -> dict[str, Any] | None:
        """Gather (every rank), then score and write the files (rank 0); returns the report on rank 0, else None."""
        data, ids = self.arrays(), self.gathered_ids()
        fit = self.fit_collector.arrays() if self.fit_collector is not None else None
        if idist.get_rank() != 0:
            return None
        self.report = self.compute(data, fit)
        write_bytes_atomic(json.dumps(self.report, indent=2).encode(), self.output_dir / "zero_shot_metrics.json")
        self._write_csv(
            "zero_shot_per_pathology.csv",
            ["pathology", *next(iter(self.report["per_pathology"].values()))],
            [[name, *row.values()] for name, row in self.report["per_pathology"].items()],
        )
        ids = ids if len(ids) == len(data["pred"]) else [str(i) for i in range(len(data["pred"]))]
        header = ["id"] + [f"p_{n}" for n in self.class_names] + list(self.class_names)
        rows = [[i, *p, *map(int, t)] for i, p, t in zip(ids, data["pred"].tolist(), data["label"].tolist())]
        self._write_csv("zero_shot_predictions.csv", header, rows)
        self._plot_roc(data["label"], data["pred"])
        mean = self.report["mean"]
        logger.info(
            "zero-shot mean AUROC %.4f, accuracy %.4f, weighted F1 %.4f, positive F1 %.4f (%s) -> %s",
            mean["auroc"],
            mean["accuracy"],
            mean["weighted_f1"],
            mean["positive_f1"],
            self.report["protocol"],
            self.output_dir,
        )
        return self.report

    def _write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        write_bytes_atomic(buffer.getvalue().encode(), self.output_dir / name)

    def _plot_roc(self, y_true: np.ndarray, y_prob: np.ndarray) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve

        cols = min(len(self.class_names), 6)
        rows = math.ceil(len(self.class_names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
        for k, name in enumerate(self.class_names):
            ax = axes[k // cols][k % cols]
            if len(np.unique(y_true[:, k])) == 2:
                fpr, tpr, _ = roc_curve(y_true[:, k], y_prob[:, k])
                ax.plot(fpr, tpr)
            ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
            auc = self.report["per_pathology"][name]["auroc"] if self.report else float("nan")
            ax.set_title(f"{name}\nAUROC {auc:.3f}", fontsize=7)
            ax.tick_params(labelsize=6)
        for k in range(len(self.class_names), rows * cols):
            axes[k // cols][k % cols].axis("off")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        write_bytes_atomic(buffer.getvalue(), self.output_dir / "roc_curves.png")


class ZeroShotJSONWriter:
    """Inference handler: writes ``<output_dir>/<volume name>_zero_shot.json`` with P(present) per pathology."""

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        present_template: str = "{} is present.",
        absent_template: str = "{} is not present.",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = check_pathology_names(class_names)
        self.templates = {"present": present_template, "absent": absent_template}
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        for source, probs in zip(out["id"], out["pred"].tolist()):
            name = Path(source).name
            for suffix in (".nii.gz", ".nii"):
                name = name.removesuffix(suffix)
            record = {
                "source": source,
                "prompts": self.templates,
                "probabilities": {n: float(p) for n, p in zip(self.class_names, probs)},
            }
            path = write_bytes_atomic(json.dumps(record, indent=2).encode(), self.output_dir / f"{name}_zero_shot.json")
            self.written.append(path)
            logger.info("wrote %s", path)
