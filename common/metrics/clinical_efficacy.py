"""Optional clinical-efficacy metrics of generated reports: CheXbert-labeller F1 and RadGraph F1.

They need large pretrained models (CheXbert ``chexbert.pth``, 1.3 GB; RadGraph, about 0.4 GB) that the packages
``f1chexbert`` and ``radgraph`` would download from the Hugging Face Hub on first use. Nothing is downloaded here:
each metric runs only when its weights are given by a local path and its package is installed, and otherwise is
reported as skipped with the reason, so an evaluation without them still completes and says what it left out.
The packages' constructors differ between versions; the argument that takes a local path is looked up, and a version
without one is skipped rather than allowed to download. (Not run here: neither package nor weights were available.)
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["clinical_efficacy_metrics"]


def _skip(name: str, reason: str) -> dict[str, str]:
    message = f"skipped: {reason}"
    logger.warning("%s %s", name, message)
    return {name: message}


def _local_weights_argument(cls: type, candidates: Sequence[str]) -> str | None:
    """The constructor argument of ``cls`` that takes a local checkpoint path (package versions differ)."""
    parameters = inspect.signature(cls.__init__).parameters
    return next((name for name in candidates if name in parameters), None)


def _chexbert(hypotheses: Sequence[str], references: Sequence[str], weights: Path) -> dict[str, float | str]:
    if importlib.util.find_spec("f1chexbert") is None:
        return _skip("CheXbert-F1", "package f1chexbert is not installed (pip install f1chexbert)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach the hub
    from f1chexbert import F1CheXbert

    argument = _local_weights_argument(F1CheXbert, ("chexbert_checkpoint", "model_path", "checkpoint"))
    if argument is None:
        return _skip("CheXbert-F1", "the installed f1chexbert takes no local checkpoint path (it would download one)")
    scorer = F1CheXbert(**{argument: str(weights)})
    accuracy, _, class_report, class_report_5 = scorer(hyps=list(hypotheses), refs=list(references))[:4]
    return {
        "CheXbert-accuracy": float(accuracy),
        "CheXbert-F1-14-micro": float(class_report["micro avg"]["f1-score"]),
        "CheXbert-F1-14-macro": float(class_report["macro avg"]["f1-score"]),
        "CheXbert-F1-5-micro": float(class_report_5["micro avg"]["f1-score"]),
        "CheXbert-F1-5-macro": float(class_report_5["macro avg"]["f1-score"]),
    }


def _radgraph(hypotheses: Sequence[str], references: Sequence[str], weights: Path) -> dict[str, float | str]:
    if importlib.util.find_spec("radgraph") is None:
        return _skip("RadGraph-F1", "package radgraph is not installed (pip install radgraph)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from radgraph import F1RadGraph

    argument = _local_weights_argument(F1RadGraph, ("model_path", "model_dir", "checkpoint"))
    if argument is None:
        return _skip("RadGraph-F1", "the installed radgraph takes no local model path (it would download one)")
    scorer = F1RadGraph(reward_level="partial", **{argument: str(weights)})
    score = scorer(hyps=list(hypotheses), refs=list(references))[0]
    return {"RadGraph-F1-partial": float(score)}


def clinical_efficacy_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    chexbert_path: str | Path | None = None,
    radgraph_path: str | Path | None = None,
) -> dict[str, float | str]:
    """CheXbert F1 (14 and 5 observations, micro and macro) and RadGraph partial F1, where their weights are given.

    Args:
        hypotheses: generated reports.
        references: reference reports, one per generated report.
        chexbert_path: local ``chexbert.pth``; empty skips CheXbert.
        radgraph_path: local RadGraph model file/folder; empty skips RadGraph.

    Returns:
        Metric values, or ``"skipped: <reason>"`` strings for the metrics that could not run.

    Raises:
        FileNotFoundError: a path is given but does not exist.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} generated reports but {len(references)} references")
    results: dict[str, float | str] = {}
    for name, path, scorer in (("CheXbert-F1", chexbert_path, _chexbert), ("RadGraph-F1", radgraph_path, _radgraph)):
        if not path:
            results.update(_skip(name, "no local weights given (set its weights path in the config to enable it)"))
            continue
        weights = Path(path).expanduser()
        if not weights.exists():
            raise FileNotFoundError(f"{name} weights path {str(weights)!r} does not exist")
        results.update(scorer(hypotheses, references, weights))
    return results
