"""What identifies a training run, recorded in its checkpoint folder: ``<ckpt_dir>/run_record.json``.

A run is identified by the values that decide its result: the manifest's content (not its path), the dataset folder,
the seed, the base models and the trained parts (the save handler's base-model record), the trainable parameters'
names and shapes, the optimizer and its hyper-parameters, the number of epochs, the batches per epoch and the batch
size, and the number of processes. Two invocations with the same identity are the same run: the second resumes the
first. The record holds one entry per training stage (``model.safetensors``, ``prompt_tuned.safetensors``,
``stage1_best``, ...), each::

    {"<stage>": {"run_id": "<sha256 of the identity>", "identity": {...}, "started": "<UTC time>"}}

API (shared by the trainers' resume handler and by anyone who needs to know which run wrote a folder):
:func:`file_digest`, :func:`run_id`, :func:`read_run_record`, :func:`recorded_identity`, :func:`identity_differences`,
:func:`write_run_record`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.data.atomic_io import write_json_atomic

__all__ = [
    "RUN_RECORD_FILE",
    "file_digest",
    "identity_differences",
    "read_run_record",
    "recorded_identity",
    "run_id",
    "write_run_record",
]

RUN_RECORD_FILE = "run_record.json"


def file_digest(path: str | Path, dataset_dir: str | Path | None = None) -> str:
    """``sha256:<hex>`` of a file's bytes (a manifest) or of a folder's files (names and bytes, sorted): a run is
    keyed by what it read, not where it was.

    Args:
        path: the file or folder; a relative path not found as given is taken against ``dataset_dir``.
        dataset_dir: the folder of relative paths (manifests are found there).
    """
    path = Path(path)
    if not path.exists() and dataset_dir is not None and not path.is_absolute():
        path = Path(dataset_dir) / path
    if not path.exists():
        raise FileNotFoundError(f"run identity: not found: {path} (check the manifest / dataset_dir / checkpoint)")
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _canonical(identity: Mapping[str, Any]) -> Any:
    """The identity as plain JSON values (tuples as lists, unknown objects as their ``str``)."""
    return json.loads(json.dumps(dict(identity), sort_keys=True, default=str))


def run_id(identity: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the identity's canonical JSON."""
    text = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_run_record(ckpt_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The record of ``ckpt_dir`` (stage -> entry); empty when there is none."""
    path = Path(ckpt_dir) / RUN_RECORD_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a run record ({err}); move it away or delete it to start a fresh run") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a run record (a JSON object of stages); move it away or delete it")
    return record


def recorded_identity(ckpt_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The identity recorded for ``stage`` in ``ckpt_dir``, or None when that stage has no record."""
    entry = read_run_record(ckpt_dir).get(stage)
    return None if entry is None else dict(entry.get("identity", {}))


def identity_differences(recorded: Mapping[str, Any], identity: Mapping[str, Any], limit: int = 8) -> list[str]:
    """Lines ``key: recorded -> now`` for the top-level values that differ (at most ``limit``)."""
    old, new = _canonical(recorded), _canonical(identity)
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            before, after = (json.dumps(v, sort_keys=True)[:120] for v in (old.get(key), new.get(key)))
            lines.append(f"{key}: {before} -> {after}")
    return lines[:limit]


def write_run_record(ckpt_dir: str | Path, stage: str, identity: Mapping[str, Any]) -> Path:
    """Record ``identity`` for ``stage`` (other stages' entries kept), atomically; returns the record's path."""
    record = read_run_record(ckpt_dir)
    record[stage] = {
        "run_id": run_id(identity),
        "identity": _canonical(identity),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_json_atomic(record, Path(ckpt_dir) / RUN_RECORD_FILE)
