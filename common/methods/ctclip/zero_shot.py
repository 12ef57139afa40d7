"""Zero-shot evaluation and inference of CT-CLIP with MONAI engines: each volume encoded once, prompts once.

CT-CLIP's protocol (arXiv 2403.17834): per pathology, the prompts "X is present." and "X is not present.";
softmax over the pair of ``exp(temperature) * cosine`` logits; P(present) is the first entry. The official
script re-encodes the volume for every pathology (18 image passes per volume, prompts padded to 512 tokens);
here one image pass per volume is scored against all 2K prompt latents, which are encoded once per
evaluation run (the weights may change between validation rounds, never within one).

Pieces:
- :class:`ZeroShotIteration` - ``iteration_update`` of a ``SupervisedEvaluator``; output ``pred`` (B, K),
  ``label`` (B, K) or None, ``image_latents`` and, when the batch has reports, ``text_latents``.
- :class:`MeanZeroShotAUROC` - Ignite metric (mean AUROC over pathologies), the key validation metric.
- :class:`ZeroShotCollector` / :class:`ZeroShotEvalWriter` - collect a run's outputs; write per-pathology
  CSV/JSON, predictions, ROC plots and report-to-volume retrieval to ``eval/`` atomically.
- :class:`ZeroShotJSONWriter` - inference: one JSON of probabilities per volume.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from common.data.atomic_io import atomic_path
from common.engines.checkpoint import unwrap
from common.methods.ctclip.model import zero_shot_probabilities
from common.methods.ctclip.training import CTCLIPPrepareBatch, build_prompts
from common.metrics.classification import safe_roc_auc
from common.metrics.retrieval import retrieval_recall_at_k
from common.metrics.zero_shot import zero_shot_report

logger = logging.getLogger(__name__)

__all__ = [
    "MeanZeroShotAUROC",
    "ZeroShotCollector",
    "ZeroShotEvalWriter",
    "ZeroShotIteration",
    "ZeroShotJSONWriter",
    "atomic_write_bytes",
    "check_input_files",
    "check_pathology_names",
    "gather_rows",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: an interruption never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_pathology_names(names: Sequence[str]) -> list[str]:
    """Any non-empty, distinct names are valid (open vocabulary); blanks and duplicates are errors."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError("class_names is empty: give the pathology names to score")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ValueError(f"class_names has blank pathology name(s) at position(s) {blank}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class_names repeats {duplicates}")
    return names


def check_input_files(paths: Sequence[str]) -> list[str]:
    """Inference inputs: a non-empty list of existing NIfTI files or DICOM folders."""
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    if not paths:
        raise ValueError(
            "input_files is empty: pass NIfTI files or DICOM folders, e.g. --input_files \"['/data/ct.nii.gz']\""
        )
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"input_files not found: {missing}")
    return [str(p) for p in paths]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N_rank, ...) tensor from every rank; ranks may hold different N (uneven validation shards)."""
    if idist.get_world_size() <= 1:
        return tensor
    sizes = idist.all_gather(torch.tensor([tensor.shape[0]])).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: tensor.shape[0]] = tensor
    chunks = idist.all_gather(padded).reshape(len(sizes), max(sizes), *tensor.shape[1:])
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])


class ZeroShotIteration:
    """``iteration_update`` for a MONAI ``SupervisedEvaluator``: one image pass per volume.

    Args:
        prepare_batch: a :class:`~common.methods.ctclip.training.CTCLIPPrepareBatch` (tokenizer, label
            columns); its ``with_reports`` decides whether report latents are computed (retrieval).
        class_names: the pathologies to score (any names: open vocabulary).
        present_template, absent_template: the prompt pair.
        autocast_dtype: ``"bfloat16"`` to run the encoders under autocast (the VQ itself stays float32).
    """

    def __init__(
        self,
        prepare_batch: CTCLIPPrepareBatch,
        class_names: Sequence[str],
        present_template: str = "{} is present.",
        absent_template: str = "{} is not present.",
        autocast_dtype: str | None = None,
    ) -> None:
        self.prepare_batch = prepare_batch
        self.class_names = check_pathology_names(class_names)
        self.prompts = build_prompts(self.class_names, present_template, absent_template)
        self.autocast_dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
        self._prompt_latents: torch.Tensor | None = None

    def encode_prompts(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """(2K, E) latents of [present_0, absent_0, ...]."""
        tokens = self.prepare_batch.tokenize(self.prompts, device)
        return unwrap(model).encode_text(tokens["input_ids"], tokens["attention_mask"]).float()

    def __call__(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        model = engine.network
        device = engine.state.device
        model.eval()
        inputs, labels = self.prepare_batch(batchdata, device, engine.non_blocking)
        first_of_run = (engine.state.iteration - 1) % max(engine.state.epoch_length or 1, 1) == 0
        context = (
            torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        with torch.no_grad(), context:
            if first_of_run or self._prompt_latents is None:
                self._prompt_latents = self.encode_prompts(model, device)
            core = unwrap(model)
            image_latents = core.encode_volume(inputs["image"]).float()
            out = {
                "pred": zero_shot_probabilities(image_latents, self._prompt_latents, core.logit_scale().float()),
                "label": labels,
                "image_latents": image_latents,
            }
            if "input_ids" in inputs:
                out["text_latents"] = core.encode_text(inputs["input_ids"], inputs.get("attention_mask")).float()
        out["id"] = _ids(batchdata, inputs["image"].shape[0])
        engine.state.output = out
        return out


def _ids(batchdata: Mapping[str, Any], size: int) -> list[str]:
    """Source paths of the batch: ``source_path`` (copied before loading; not ``image_*``, which MONAI treats as meta dicts) or the MetaTensor's filename."""
    if "source_path" in batchdata:
        return [str(p) for p in batchdata["source_path"]]
    image = batchdata.get("image")
    meta = getattr(image, "meta", None) or batchdata.get("image_meta_dict") or {}
    names = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if names is None:
        return [str(i) for i in range(size)]
    return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]


class MeanZeroShotAUROC(Metric):
    """Mean over pathologies of the AUROC of P(present) (NaN pathologies, with one class only, left out).

    Expects the engine output of :class:`ZeroShotIteration` (``output_transform`` default picks pred/label).
    """

    def __init__(
        self, output_transform=lambda out: (out["pred"], out["label"]), device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        if label is None:
            raise ValueError("zero-shot AUROC needs the pathology label columns in the validation data")
        self._preds.append(pred.detach().float().cpu())
        self._labels.append(label.detach().float().cpu())

    def compute(self) -> float:
        preds, labels = gather_rows(torch.cat(self._preds)), gather_rows(torch.cat(self._labels))
        aucs = [safe_roc_auc(labels[:, k].numpy(), preds[:, k].numpy()) for k in range(preds.shape[1])]
        valid = [a for a in aucs if not math.isnan(a)]
        return float(np.mean(valid)) if valid else float("nan")


class ZeroShotCollector:
    """Collects one evaluator run's ids, probabilities, labels and latents (rank 0 gathers under DDP)."""

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
        """Concatenated results; keys present only where every batch had them."""
        out = {}
        for key, parts in self.parts.items():
            if parts:
                out[key] = gather_rows(torch.cat(parts)).numpy()
        return out


class ZeroShotEvalWriter(ZeroShotCollector):
    """Writes the evaluation of a run to ``output_dir`` (rank 0), every file atomically.

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

    def compute(self) -> dict[str, Any]:
        data = self.arrays()
        if "label" not in data:
            raise ValueError("zero-shot evaluation needs the pathology label columns in the evaluated manifest")
        fit_true = fit_prob = None
        if self.fit_collector is not None:
            fit = self.fit_collector.arrays()
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

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        self.report = self.compute()
        if idist.get_rank() != 0:
            return self.report
        data = self.arrays()
        atomic_write_bytes(self.output_dir / "zero_shot_metrics.json", json.dumps(self.report, indent=2).encode())
        self._write_csv(
            "zero_shot_per_pathology.csv",
            ["pathology", *next(iter(self.report["per_pathology"].values()))],
            [[name, *row.values()] for name, row in self.report["per_pathology"].items()],
        )
        ids = self.ids if len(self.ids) == len(data["pred"]) else [str(i) for i in range(len(data["pred"]))]
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
        atomic_write_bytes(self.output_dir / name, buffer.getvalue().encode())

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
        atomic_write_bytes(self.output_dir / "roc_curves.png", buffer.getvalue())


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
            path = atomic_write_bytes(self.output_dir / f"{name}_zero_shot.json", json.dumps(record, indent=2).encode())
            self.written.append(path)
            logger.info("wrote %s", path)
