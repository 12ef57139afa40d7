"""CLEFT evaluation: zero-shot / prompt-tuned classification metrics with eval files, linear probe, inference output.

Everything is written atomically (temp file + rename) under the bundle's ``eval/`` folder, by rank 0 only:
``<name>_metrics.json`` (accuracy, macro AUROC, macro F1, per-class AUROC, confusion matrix) and
``<name>_confusion_matrix.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

from common.data.atomic_io import atomic_path, write_json_atomic
from common.engines.checkpoint import unwrap
from common.metrics.classification import classification_metrics
from common.metrics.linear_probe import linear_probe

logger = logging.getLogger(__name__)

__all__ = [
    "ClassProbabilityWriter",
    "ClassificationEvaluation",
    "extract_image_features",
    "list_images",
    "plot_confusion_matrix",
    "probs_and_label",
    "run_linear_probe",
]

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


def _is_writer() -> bool:
    return idist.get_rank() == 0


def probs_and_label(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output (``decollate=False``) -> ``(class probabilities (B, K), class ids (B,))``."""
    return output["pred"]["probs"], output["label"]


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save a confusion matrix (rows: truth, columns: prediction) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


class ClassificationEvaluation(Metric):
    """Ignite metric over an epoch of class probabilities: accuracy, macro AUROC, macro F1; writes eval files.

    ``compute`` returns the accuracy (a scalar, so it can be MONAI's key metric); ``{name}_auroc`` and
    ``{name}_f1`` are added to ``engine.state.metrics`` next to it; the full report (per-class AUROC, confusion matrix, counts) goes to
    ``output_dir/{name}_metrics.json`` with a confusion-matrix PNG, when ``output_dir`` is set.

    Args:
        class_names: the K classes in id order.
        name: prefix of the metric keys and file names (``zero_shot``, ``prompt_tuned``).
        output_dir: where to write the files (``eval/``); None writes nothing.
        output_transform: engine output -> ``(probs (B, K), class ids (B,))``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        name: str = "zero_shot",
        output_dir: str | Path | None = None,
        output_transform: Callable = probs_and_label,
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_names = list(class_names)
        self.name = name
        self.output_dir = Path(output_dir) if output_dir else None
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
        probs, labels = torch.cat(self._probs), torch.cat(self._labels)
        if idist.get_world_size() > 1:
            probs, labels = idist.all_gather(probs), idist.all_gather(labels)
        report = classification_metrics(labels.numpy(), probs.numpy(), class_names=self.class_names)
        matrix = confusion_matrix(labels.numpy(), probs.argmax(-1).numpy(), labels=list(range(len(self.class_names))))
        report.update(
            {"num_samples": len(labels), "class_names": self.class_names, "confusion_matrix": matrix.tolist()}
        )
        if self.output_dir is not None and _is_writer():
            write_json_atomic(report, self.output_dir / f"{self.name}_metrics.json")
            plot_confusion_matrix(
                matrix,
                self.class_names,
                self.output_dir / f"{self.name}_confusion_matrix.png",
                title=f"{self.name}: accuracy {report['accuracy']:.3f}, AUROC {report['auroc']:.3f}",
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
    for batch in tqdm(loader, desc=description, disable=not _is_writer()):
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
    if _is_writer():
        write_json_atomic(
            {"class_names": list(class_names), "seed": seed, "results": results},
            Path(output_dir) / "linear_probe_metrics.json",
        )
    return results


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
        if _is_writer():
            write_json_atomic({"class_names": self.class_names, "predictions": self.rows}, self.output_path)
            logger.info("wrote %d predictions to %s", len(self.rows), self.output_path)
