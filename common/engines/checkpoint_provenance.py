"""Which run and which data a checkpoint comes from: recorded at save time, logged and checked at load time.

The save handler (:class:`~common.engines.save_handler.TrainedWeightsSaveHandler`) writes, next to the base-model
record, :func:`training_data_record` of the rows it trained on and a ``run_id``; evaluate and inference pass the
checkpoint path through :func:`checked_checkpoint`, which logs the checkpoint (path, run, epoch, metric, training
manifest) and, where the config gives the training rows of the data in hand, refuses weights trained from other
data (the demo's, a previous data set's) unless ``allow_other_run_weights`` is set.

"Another run's data" means: the *training split* the weights were fitted on differs from the training split of the
manifest given now. The fingerprint covers the train rows only (image path relative to the manifest's folder,
report, labels, patient), so evaluating on another test split, or a manifest whose test rows changed, is legitimate
and passes; a manifest without a train split (a test-only manifest) cannot be compared and is logged as such.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_KEY",
    "RUN_KEY",
    "checked_checkpoint",
    "describe_checkpoint",
    "new_run_id",
    "read_record",
    "training_data_record",
]

DATA_KEY = "training_data_sha256"
RUN_KEY = "run_id"
_CONTEXT_KEYS = ("row", "manifest")  # where a row came from, not what it holds


def new_run_id() -> str:
    """A run's id: UTC start time and a random suffix (``20261202T003000Z-1a2b3c``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _row_content(row: Mapping[str, Any]) -> dict[str, Any]:
    root = Path(str(row.get("manifest", ""))).parent
    content = {}
    for key, value in row.items():
        if key in _CONTEXT_KEYS or key.startswith("_"):
            continue
        if isinstance(value, str) and os.path.isabs(value):
            try:
                value = os.path.relpath(value, root)  # moving the data set keeps its fingerprint
            except ValueError:
                pass
        content[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return content


def training_data_record(rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The record of the rows a run trains on: manifest path(s), row count, and a SHA-256 of their content.

    Args:
        rows: manifest rows (``common.data.manifest.load_manifest``) of the training split; None or empty gives {}.

    Returns:
        ``{"training_manifest": ..., "training_rows": N, "training_data_sha256": hex}``; the hash is independent
        of row order and of where the data set lies on disk.
    """
    if not rows:
        return {}
    lines = sorted(json.dumps(_row_content(row), sort_keys=True, default=str) for row in rows)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    manifests = sorted({str(row.get("manifest", "")) for row in rows} - {""})
    return {"training_manifest": ", ".join(manifests), "training_rows": len(rows), DATA_KEY: digest}


def read_record(path: str | Path) -> dict[str, Any]:
    """The record of a checkpoint: a safetensors file's header or a folder's ``base_models.json``; {} if none."""
    from common.engines.checkpoint import read_checkpoint_metadata
    from common.engines.save_handler import read_folder_record

    path = Path(path)
    if path.is_dir():
        return read_folder_record(path)
    if path.is_file():
        return read_checkpoint_metadata(path)
    return {}


def describe_checkpoint(path: str | Path, record: Mapping[str, Any]) -> str:
    """One line naming a checkpoint: path, run, epoch, metric and the training data it came from."""
    score_name = record.get("score_name")
    metric = f"{score_name}={record.get(score_name)}" if score_name else "no validation metric (final weights)"
    data = (
        f"trained from {record['training_manifest']} ({record.get('training_rows')} rows, "
        f"data sha256 {str(record[DATA_KEY])[:12]})"
        if record.get(DATA_KEY)
        else "no training-data record (written before records were kept, or not by our trainer)"
    )
    return f"{path}: run {record.get(RUN_KEY, 'unknown')}, epoch {record.get('epoch', 'unknown')}, {metric}, {data}"


def checked_checkpoint(
    path: str | Path, training_rows: Sequence[Mapping[str, Any]] | None = None, allow_other_run_weights: bool = False
) -> str:
    """Log which checkpoint is loaded and refuse one trained on other data; returns ``path`` (for config chaining).

    Args:
        path: a safetensors checkpoint or a checkpoint/adapter folder written by our save handler; empty (no
            checkpoint, the loader keeps the base model) is returned as is.
        training_rows: the train-split rows of the manifest given now (None: nothing to compare, e.g. inference).
        allow_other_run_weights: load weights trained on other data anyway (the config knob of that name).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the checkpoint's training data differ from ``training_rows`` and the knob is off.
    """
    if not str(path or ""):
        return ""  # no checkpoint: the loader uses the base model (e.g. ctclip's --adapter_dir "")
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, or set the checkpoint path)")
    record = read_record(path)
    logger.info("loading checkpoint %s", describe_checkpoint(path, record))
    if training_rows is None:
        return str(path)
    current = training_data_record(training_rows)
    if not current:
        logger.info("the manifest given now has no train split: %s is not compared with its training data", path)
        return str(path)
    recorded = record.get(DATA_KEY)
    if recorded == current[DATA_KEY]:
        return str(path)
    what = (
        f"was trained from {record.get('training_manifest')} ({record.get('training_rows')} train rows, "
        f"sha256 {str(recorded)[:12]})"
        if recorded
        else "has no record of the data it was trained from"
    )
    message = (
        f"checkpoint {path} (run {record.get(RUN_KEY, 'unknown')}) {what}, but the train split given now is "
        f"{current['training_manifest']} ({current['training_rows']} rows, sha256 {current[DATA_KEY][:12]}): "
        "these are another run's weights (a demo run in the same bundle_root, an earlier data set). Train on this "
        "data first (a run that failed left the old checkpoint), point the checkpoint path at this run's weights, "
        "or pass --allow_other_run_weights true to use them anyway"
    )
    if allow_other_run_weights:
        logger.warning("%s; allow_other_run_weights is set: loading them", message.split(": these are")[0])
        return str(path)
    raise ValueError(message)
