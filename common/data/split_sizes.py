"""Minimum split sizes, checked before any training or scoring, with a message that names what to do.

A metric needs rows of its own kind: an AUROC needs both classes, a linear probe needs two classes to fit, R@K needs
at least K candidates. Too small a split used to surface as a scikit-learn error deep in evaluation, or as a NaN
validation score that selected no checkpoint. Each check here raises :class:`SplitSizeError` naming the manifest,
the split, its size (and classes), the minimum and what to change. (The train split's minimum of ``batch_size``
rows under ``drop_last`` is checked on the loader itself, by
:class:`common.engines.training_outcome.TrainingOutcomeCheck`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SplitSizeError", "require_both_classes", "require_rows"]


class SplitSizeError(ValueError):
    """A split too small (or of one class) for what it is used for."""


def _manifests(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(sorted({str(r.get("manifest", "")) for r in rows} - {""})) or "the manifest"


def require_rows(
    rows: Sequence[Mapping[str, Any]], split: str, minimum: int, why: str, manifest: str = ""
) -> list[Mapping[str, Any]]:
    """``rows`` if there are at least ``minimum``; else :class:`SplitSizeError` naming ``why`` the minimum holds.

    Args:
        rows: the rows of ``split``.
        split: its name, for the message.
        minimum: the fewest rows that make sense.
        why: what needs them, e.g. ``"retrieval R@10"``.
        manifest: the manifest's path, when ``rows`` may be empty (their ``manifest`` key names it otherwise).
    """
    if len(rows) < minimum:
        raise SplitSizeError(
            f"{manifest or _manifests(rows)}: the {split!r} split has {len(rows)} row(s); {why} needs at least "
            f"{minimum}: add rows to the {split} split (the 'split' column) or lower the setting that needs them"
        )
    return list(rows)


def require_both_classes(
    rows: Sequence[Mapping[str, Any]], split: str, label_columns: Sequence[str], why: str = "an AUROC"
) -> list[Mapping[str, Any]]:
    """``rows`` if at least one label column has both classes (0 and 1, or two class ids) among them.

    Labels with one class only are scored NaN and left out of a mean; when every label is so, the score is NaN
    and no checkpoint can be chosen. Raises :class:`SplitSizeError` with the class counts per label.
    """
    counts = {}
    for column in label_columns:
        values = [r.get(column) for r in rows if r.get(column) is not None]
        counts[column] = {v: values.count(v) for v in sorted(set(values), key=str)}
    if not rows or not any(len(c) >= 2 for c in counts.values()):
        shown = "; ".join(f"{c}: {v or 'no values'}" for c, v in list(counts.items())[:8])
        raise SplitSizeError(
            f"{_manifests(rows)}: the {split!r} split has {len(rows)} row(s) and no label with both classes "
            f"({shown}); {why} needs at least one positive and one negative row of a label: add rows of the "
            f"missing class to the {split} split"
        )
    return list(rows)
