"""CLEFT evaluation: the zero-shot / prompt-tuned classification metric (computes only), the linear probe.

:class:`ClassificationEvaluation` gathers every rank's predictions in dataset order and computes the report;
:class:`~common.methods.cleft.writers.ClassificationReportWriter` writes it to ``eval/`` (rank 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from common.data.atomic_io import write_json_atomic
from common.engines.checkpoint import unwrap
from common.engines.distributed import all_gather_rows
from common.metrics.classification import classification_metrics
from common.metrics.linear_probe import linear_probe
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = ["ClassificationEvaluation", "extract_image_features", "list_images", "probs_and_label", "run_linear_probe"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def list_images(input_dir: str | Path) -> list[str]:
    """Sorted radiograph files (PNG/JPG/DICOM) in ``input_dir``; none is an error naming the folder."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input_dir={str(folder)!r} is not a folder")
    files = sorted(str(f) for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"input_dir={str(folder)!r} holds no PNG/JPG/DICOM images")
    return files


def probs_and_label(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (``decollate=False``) -> ``(class probabilities (B, K), class ids (B,))``."""
    return output["pred"]["probs"], output["label"]


class ClassificationEvaluation(Metric):
    """Ignite metric over an epoch of class probabilities: accuracy, macro AUROC, macro F1 (computes, never writes).

    ``compute`` gathers every rank's rows in dataset order and returns the accuracy (a scalar, so it can be MONAI's
    key metric); ``{key}_auroc`` and ``{key}_f1`` are added to ``engine.state.metrics`` next to it, and the full
    report (per-class AUROC, confusion matrix, counts, ``name``) goes to ``engine.state.metric_details[key]``, where
    :class:`~common.methods.cleft.writers.ClassificationReportWriter` finds it.

    Args:
        class_names: the K classes in id order.
        name: the report's name, prefix of its eval files (``zero_shot``, ``prompt_tuned``) and of its log line.
        output_transform: engine output -> ``(probs (B, K), class ids (B,))``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        name: str = "zero_shot",
        output_transform: Callable = probs_and_label,
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_names = list(class_names)
        self.name = name
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.last_report: dict[str, Any] = {}

    @reinit__is_reduced
    def update(self, output) -> None:
        probs, labels = output
        if probs.shape[-1] != len(self.class_names):
            raise ValueError(f"{self.name}: {probs.shape[-1]} class scores for {len(self.class_names)} class names")
        self._probs.append(probs.detach().float().cpu())
        self._labels.append(torch.as_tensor(labels).detach().long().cpu().reshape(-1))

    def compute(self) -> dict[str, float]:
        if not self._probs:
            raise ValueError(f"{self.name}: no samples were evaluated")
        probs, labels = all_gather_rows(torch.cat(self._probs)), all_gather_rows(torch.cat(self._labels))
        report = classification_metrics(labels.numpy(), probs.numpy(), class_names=self.class_names)
        matrix = confusion_matrix(labels.numpy(), probs.argmax(-1).numpy(), labels=list(range(len(self.class_names))))
        report.update(
            {
                "name": self.name,
                "num_samples": len(labels),
                "class_names": self.class_names,
                "confusion_matrix": matrix.tolist(),
            }
        )
        logger.info(
            "%s: accuracy %.4f, AUROC %.4f, F1 %.4f (n=%d)",
            self.name,
            report["accuracy"],
            report["auroc"],
            report["f1"],
            len(labels),
        )
        self.last_report = report
        return float(report["accuracy"])

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        for key in ("auroc", "f1"):
            engine.state.metrics[f"{name}_{key}"] = float(self.last_report[key])
        if getattr(engine.state, "metric_details", None) is None:  # MONAI engines have it; a plain Engine has not
            engine.state.metric_details = {}
        engine.state.metric_details[name] = self.last_report


@torch.no_grad()
def extract_image_features(
    model: torch.nn.Module,
    loader: Iterable,
    prepare_batch: Callable,
    device: torch.device | str,
    description: str = "image features",
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised projected image features ``(N, E)`` and class ids ``(N,)`` of a data loader."""
    clip = unwrap(model)
    clip = getattr(clip, "clip", clip)  # a CLEFTClassifier wraps the dual encoder
    clip.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=description, disable=idist.get_rank() != 0):
        inputs, targets = prepare_batch(batch, device)
        features.append(clip.encode_image(inputs[clip.image_key]).float().cpu())
        labels.append(targets.cpu())
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def run_linear_probe(
    model: torch.nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    prepare_batch: Callable,
    class_names: Sequence[str],
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probes of the frozen image features at each label fraction; writes ``linear_probe_metrics.json``."""
    train_x, train_y = extract_image_features(
        model, train_loader, prepare_batch, device, "linear probe: train features"
    )
    test_x, test_y = extract_image_features(model, test_loader, prepare_batch, device, "linear probe: test features")
    results = linear_probe(train_x, train_y, test_x, test_y, fractions=fractions, class_names=class_names, seed=seed)
    if idist.get_rank() == 0:
        write_json_atomic(
            {"class_names": list(class_names), "seed": seed, "results": results},
            Path(output_dir) / "linear_probe_metrics.json",
        )
    return results
