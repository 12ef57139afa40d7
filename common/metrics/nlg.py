"""Report-generation NLG metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D from ``pycocoevalcap`` (COCO caption code).

All scorers see one tokenisation (:func:`nlg_tokenize`: lower case, punctuation removed, as R2Gen / R2GenGPT clean
their text before calling the same scorers), and the references are the full reports: R2GenGPT decodes its
references from token ids cut to ``max_length``, which drops the tail of long reports and inflates n-gram scores.
METEOR runs the official Java METEOR 1.5 jar that ships in the wheel when ``java`` is on the PATH; otherwise it is
reported as skipped, never replaced silently by another implementation.

Notes on the numbers: ROUGE-L is the COCO variant (sentence LCS F-measure with beta = 1.2); CIDEr-D's document
frequencies come from the references being scored, so it depends on the test set.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["java_available", "nlg_metrics", "nlg_tokenize"]

_WORD = re.compile(r"[a-z0-9]+")


def nlg_tokenize(text: str) -> str:
    """Lower-case words and numbers separated by single spaces, punctuation dropped.

    ``"No  effusion."`` -> ``"no effusion"``.
    """
    return " ".join(_WORD.findall(str(text).lower()))


def java_available() -> bool:
    """Whether the METEOR jar can run (a ``java`` executable on the PATH)."""
    return shutil.which("java") is not None


def _as_lists(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]):
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} generated reports but {len(references)} references")
    if not hypotheses:
        raise ValueError("no reports to score")
    res, gts = {}, {}
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        refs = [ref] if isinstance(ref, str) else list(ref)
        refs = [nlg_tokenize(r) for r in refs]
        if not any(refs):
            raise ValueError(f"reference {i} is empty after tokenisation: {ref!r}")
        res[i] = [nlg_tokenize(hyp)]
        gts[i] = [r for r in refs if r]
    return res, gts


def _rouge_l(res: Mapping[int, list[str]], gts: Mapping[int, list[str]]) -> float:
    """COCO ROUGE-L; an empty generated report scores 0 (the COCO code divides by its length)."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    scores = [rouge.calc_score(res[i], gts[i]) if res[i][0] else 0.0 for i in res]
    return float(sum(scores) / len(scores))


def nlg_metrics(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], meteor: bool | None = None
) -> dict[str, float | str]:
    """Corpus-level NLG scores of generated reports against full-length references.

    Args:
        hypotheses: one generated report per study.
        references: the reference report of each study (or several references per study).
        meteor: run METEOR (needs Java); None runs it when Java is present. When it cannot run, the result holds
            ``"METEOR": "skipped: <reason>"``.

    Returns:
        ``{"BLEU-1": ..., "BLEU-2": ..., "BLEU-3": ..., "BLEU-4": ..., "METEOR": ..., "ROUGE-L": ..., "CIDEr": ...,
        "num_reports": N}``; scores in [0, 1] except CIDEr-D (up to 10).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res, gts = _as_lists(hypotheses, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    results: dict[str, float | str] = {f"BLEU-{n + 1}": float(score) for n, score in enumerate(bleu)}
    if meteor is None:
        meteor = java_available()
        if not meteor:
            results["METEOR"] = "skipped: no java executable on the PATH (METEOR 1.5 is a Java program)"
    elif meteor and not java_available():
        raise RuntimeError("METEOR was requested but no java executable is on the PATH")
    else:
        if not meteor:
            results["METEOR"] = "skipped: disabled by configuration"
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        # the jar cannot score an empty line; a generated report with no words gets a lone "." (matches nothing)
        meteor_res = {i: [h[0] or "."] for i, h in res.items()}
        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(gts, meteor_res)
        finally:
            del scorer
        results["METEOR"] = float(score)
    results["ROUGE-L"] = _rouge_l(res, gts)
    cider, _ = Cider().compute_score(gts, res)
    results["CIDEr"] = float(cider)
    results["num_reports"] = len(res)
    return results
