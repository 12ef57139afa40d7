"""Helpers of the bundles' two-rank parity tests: the size of a demo split, the scalars a run logged to TensorBoard.

A two-rank run validates an ODD split (rank 0 holds one row more than rank 1), so a gather that assumes even shards
crashes, and one that concatenates rank by rank puts the rows out of dataset order; its metrics and eval files must
equal the one-process run's.
"""

from __future__ import annotations

import csv
from pathlib import Path


def split_size(manifest: Path, split: str) -> int:
    """Number of rows of ``split`` in a demo manifest (CSV)."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        return sum(row["split"] == split for row in csv.DictReader(handle))


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every TensorBoard event file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars
