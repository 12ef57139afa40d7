"""Downstream evaluation of projected embeddings against raw embeddings and PCA (arXiv 2502.02048, §3).

The paper fits the projection on the training split, transforms train and test, fits a classic classifier on
the training features and reports test F1. Here the classifier is a scikit-learn logistic-regression probe
(standardised features); every feature set gets the same probe, so the comparison is only about the features:

* ``raw``: the frozen embeddings as they are;
* ``pca``: PCA of the raw embeddings fitted on the training split, to the projection's width;
* ``projected``: the trained heads' outputs.

Each is scored for the image alone and for image+text (late fusion by concatenation, the paper's
per-modality variant). Cross-modal retrieval R@1/5/10 is scored on the projections of the test split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from common.data.atomic_io import atomic_path, write_json_atomic
from common.data.split_sizes import require_both_classes, require_rows
from common.engines.checkpoint import unwrap
from common.metrics.classification import classification_metrics
from common.metrics.embedding_quality import pair_auroc
from common.metrics.retrieval import bidirectional_retrieval
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)

__all__ = ["project_table", "evaluate_projection", "plot_downstream", "format_summary"]


@torch.no_grad()
def project_table(
    model: torch.nn.Module, table: Sequence[dict[str, Any]], batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Image and text projections (N, d_out) of an embedding table, in eval mode on the model's device."""
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    images, texts = [], []
    for start in range(0, len(table), batch_size):
        rows = table[start : start + batch_size]
        batch = {
            "image_embedding": torch.as_tensor(np.stack([r["image_embedding"] for r in rows]), device=device),
            "text_embedding": torch.as_tensor(np.stack([r["text_embedding"] for r in rows]), device=device),
        }
        out = model(batch)
        images.append(out["image_projection"].float().cpu())
        texts.append(out["text_projection"].float().cpu())
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


def _probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, class_names, seed: int
) -> dict:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    classifier.fit(train_x, train_y)
    scores = classifier.predict_proba(test_x)
    # predict_proba columns follow the classes seen in training; place them in the full class order
    full = np.zeros((len(test_x), len(class_names)))
    full[:, classifier.classes_.astype(int)] = scores
    return classification_metrics(test_y, full if len(class_names) > 2 else full[:, 1], class_names=class_names)


def evaluate_projection(
    model: torch.nn.Module,
    table: Sequence[dict[str, Any]],
    output_dir: str | Path,
    class_names: Sequence[str] | None = None,
    train_split: str = "train",
    test_split: str = "test",
    retrieval_ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
) -> dict[str, Any]:
    """Score raw, PCA and projected features with a linear probe, and projected retrieval; write ``metrics.json``
    and ``downstream.png`` to ``output_dir``. Returns the metrics dict."""
    train = [r for r in table if r["split"] == train_split]
    test = [r for r in table if r["split"] == test_split]
    # minimum sizes, before any work (scikit-learn's errors on a 2-row split name no split)
    require_rows(train, train_split, 2, "the PCA and linear probe fitted on it")
    require_both_classes(train, train_split, ["label"], "the linear probe (logistic regression)")
    require_rows(test, test_split, max(2, *retrieval_ks), f"retrieval R@{max(retrieval_ks)} (retrieval_ks)")
    require_both_classes(test, test_split, ["label"], "the classification AUROC")
    train_y = np.array([int(r["label"]) for r in train])
    test_y = np.array([int(r["label"]) for r in test])
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    class_names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    if len(class_names) < num_classes:
        raise ValueError(f"{len(class_names)} class names for labels up to {num_classes - 1}")

    raw = {
        split: {
            "image": np.stack([r["image_embedding"] for r in rows]),
            "text": np.stack([r["text_embedding"] for r in rows]),
        }
        for split, rows in (("train", train), ("test", test))
    }
    projected = {}
    for split, rows in (("train", train), ("test", test)):
        image_proj, text_proj = project_table(model, rows)
        projected[split] = {"image": image_proj, "text": text_proj}
    width = projected["train"]["image"].shape[1]
    pca = {"train": {}, "test": {}}
    for modality in ("image", "text"):
        components = min(width, len(train) - 1, raw["train"][modality].shape[1])
        reducer = PCA(n_components=components, random_state=seed).fit(raw["train"][modality])
        for split in ("train", "test"):
            pca[split][modality] = reducer.transform(raw[split][modality])

    results: dict[str, Any] = {
        "num_train": len(train),
        "num_test": len(test),
        "class_names": class_names,
        "classification": {},
    }
    for name, features in (("raw", raw), ("pca", pca), ("projected", projected)):
        for inputs in ("image", "image+text"):
            modalities = ["image", "text"] if inputs == "image+text" else ["image"]
            train_x, test_x = (
                np.concatenate([features[split][m] for m in modalities], axis=1) for split in ("train", "test")
            )
            results["classification"][f"{name}/{inputs}"] = _probe(train_x, train_y, test_x, test_y, class_names, seed)
    # the geometry the paper's loss shapes: does cosine similarity separate same-label from different-label pairs?
    test_labels = torch.as_tensor(test_y)
    results["pair_auroc"] = {
        f"{name}/{modality}": pair_auroc(torch.as_tensor(features["test"][modality]), test_labels)
        for name, features in (("raw", raw), ("pca", pca), ("projected", projected))
        for modality in ("image", "text")
    }
    image_test = F.normalize(torch.as_tensor(projected["test"]["image"]), dim=-1)
    text_test = F.normalize(torch.as_tensor(projected["test"]["text"]), dim=-1)
    results["retrieval"] = bidirectional_retrieval(image_test, text_test, retrieval_ks)

    output_dir = Path(output_dir)
    write_json_atomic(results, output_dir / "metrics.json")
    plot_downstream(results, output_dir / "downstream.png")
    for key, value in results["classification"].items():
        logger.info("%-22s F1 %.3f  AUROC %.3f  accuracy %.3f", key, value["f1"], value["auroc"], value["accuracy"])
    logger.info("retrieval (test, projected): %s", {k: round(v, 3) for k, v in results["retrieval"].items()})
    return results


def plot_downstream(results: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of F1 and AUROC per feature set, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["classification"])
    f1 = [results["classification"][n]["f1"] for n in names]
    auroc = [results["classification"][n]["auroc"] for n in names]
    x = np.arange(len(names))
    fig, (probe_ax, pair_ax) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    probe_ax.bar(x - 0.2, f1, 0.4, label="F1 (macro)")
    probe_ax.bar(x + 0.2, auroc, 0.4, label="AUROC")
    probe_ax.set_xticks(x, names, rotation=20, ha="right")
    probe_ax.set_ylim(0, 1.05)
    probe_ax.set_title(f"Linear probe on the test split (n={results['num_test']})")
    probe_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    pair_names = list(results.get("pair_auroc", {}))
    pair_ax.bar(np.arange(len(pair_names)), [results["pair_auroc"][n] for n in pair_names], 0.6, color="tab:green")
    pair_ax.set_xticks(np.arange(len(pair_names)), pair_names, rotation=20, ha="right")
    pair_ax.set_ylim(0, 1.05)
    pair_ax.set_title("Same-label pair AUROC (test)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)


def format_summary(results: dict[str, Any]) -> str:
    """A small text table of the evaluation, for the console."""
    lines = [
        f"linear probe on the test split (n_train={results['num_train']}, n_test={results['num_test']})",
        f"{'features':<24}{'F1':>8}{'AUROC':>8}{'acc':>8}",
    ]
    for key, value in results["classification"].items():
        lines.append(f"{key:<24}{value['f1']:>8.3f}{value['auroc']:>8.3f}{value['accuracy']:>8.3f}")
    lines.append("same-label pair AUROC (test): " + "  ".join(f"{k}={v:.3f}" for k, v in results["pair_auroc"].items()))
    lines.append(
        "retrieval (projected, test): "
        + "  ".join(f"{k}={v:.3f}" for k, v in results["retrieval"].items() if "R@" in k)
    )
    return "\n".join(lines)
