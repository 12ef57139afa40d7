"""Helpers of the bundles' two-rank parity tests: the size of a demo split, the scalars a run logged to TensorBoard.

A two-rank run validates an ODD split (rank 0 holds one row more than rank 1), so a gather that assumes even shards
crashes, and one that concatenates rank by rank puts the rows out of dataset order; its metrics and eval files must
equal the one-process run's.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest


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


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON (dicts, lists) as ``{"a/b/0": leaf}``, so it compares leaf by leaf."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}/").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): value}


def assert_same_results(ddp: Any, single: Any, rel: float = 1e-5, abs_: float = 1e-6) -> None:
    """Equal structure, equal text, numbers equal up to float rounding (a batch of 5 rows and one of 9 may round
    the same row's last bits differently). Rows compare in order: a row out of dataset order fails."""
    ddp, single = flatten(ddp), flatten(single)
    assert list(ddp) == list(single)
    for key, value in single.items():
        if isinstance(value, float) and not math.isnan(value):
            assert ddp[key] == pytest.approx(value, rel=rel, abs=abs_), key
        elif isinstance(value, float):
            assert math.isnan(ddp[key]), key
        else:
            assert ddp[key] == value, key


def read_csv_rows(path: Path) -> list[list[Any]]:
    """A CSV's rows, numbers as floats (for :func:`assert_same_results`)."""

    def parse(cell: str) -> Any:
        try:
            return float(cell)
        except ValueError:
            return cell

    with open(path, newline="", encoding="utf-8") as handle:
        return [[parse(c) for c in row] for row in csv.reader(handle)]
