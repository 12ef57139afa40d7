"""The one save handler of our checkpoints: safetensors files or PEFT adapter folders, each with its base record.

:class:`TrainedWeightsSaveHandler` is an :class:`ignite.handlers.checkpoint.BaseSaveHandler`; Ignite's
``Checkpoint`` decides when to save, what is best, and which files are superseded. What it writes depends on
the file name Ignite gives it:

- ``*.safetensors``: the state dict (of :class:`~common.engines.checkpoint.TrainedWeights`) with the base-model
  record (:func:`common.weights.fingerprint.base_record`), the run id, the training data's record
  (:mod:`common.engines.checkpoint_provenance`), the epoch and the score in the header.
- any other name: a folder, written beside the old one and swapped in (``common.data.atomic_io``). Each object of
  ``to_save`` that is a PEFT model is written with its own ``save_pretrained`` (``adapter_config.json`` with
  ``base_model_name_or_path`` set, ``adapter_model.safetensors``), in a sub-folder named by its ``to_save`` key,
  or as the folder itself when it is the only object; every other object as ``<key>.safetensors``. The folder's
  ``base_models.json`` holds the record, so ``PeftModel.from_pretrained(base, folder)`` keeps working unchanged.

``model_pt`` names the file (as Ignite names it, e.g. ``model.safetensors``) that is also written as the model-zoo's
``models/model.pt`` (:func:`~common.engines.checkpoint.save_model_pt`: the same tensors and record, paths cut, for
``torch.load(weights_only=True)`` and MONAI's ``CheckpointLoader``), so every writer of weights is this handler.

A superseded file is removed only after its replacement is complete, so a crash leaves the previous best; what a
kill -9 mid-swap leaves (a staging ``.adapters.tmp-*`` folder, the previous folder renamed ``.adapters.old-*``) is
undone when the next run creates its save handler (:func:`common.data.atomic_io.clean_interrupted_writes`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.data.atomic_io import atomic_directory, clean_interrupted_writes
from common.engines.checkpoint import save_model_pt, save_safetensors, unwrap
from common.engines.checkpoint_provenance import RUN_KEY, new_run_id, training_data_record
from common.weights.fingerprint import BASE_NAME_KEY, base_fingerprint, base_record, check_base_record
from ignite.handlers.checkpoint import BaseSaveHandler
from peft import get_peft_model_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "RECORD_FILE",
    "TrainedWeightsSaveHandler",
    "check_adapter_folder",
    "read_folder_record",
    "write_adapter_folder",
]

RECORD_FILE = "base_models.json"


def _is_peft(module: Any) -> bool:
    return hasattr(unwrap(module), "peft_config") and hasattr(unwrap(module), "save_pretrained")


def _flat_trained_state(parts: Mapping[str, Any], to_save: Mapping[str, Any]) -> tuple[dict, dict[str, str]]:
    """One state dict of a folder checkpoint's objects, keys prefixed ``<to_save key>.``: PEFT objects give their
    adapter weights alone (keyed as PEFT saves them) and their LoRA config as ``<key>_config`` (JSON) for the record."""
    state: dict[str, torch.Tensor] = {}
    configs: dict[str, str] = {}
    for key, part in parts.items():
        obj = to_save.get(key)
        if obj is not None and _is_peft(obj):
            model = unwrap(obj)
            part = get_peft_model_state_dict(model)
            configs[f"{key}_config"] = json.dumps(model.peft_config["default"].to_dict(), default=sorted)
        state.update({f"{key}.{name}": tensor for name, tensor in part.items()})
    return state, configs


def write_adapter_folder(peft_model: torch.nn.Module, folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``peft_model``'s adapters with its ``save_pretrained`` into ``folder`` (which must be a fresh one,
    e.g. the staging folder of ``atomic_directory``), with ``base_model_name_or_path`` and ``base_models.json``
    naming the base; returns the folder."""
    model = unwrap(peft_model)
    for config in model.peft_config.values():
        config.base_model_name_or_path = record[BASE_NAME_KEY]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / RECORD_FILE).write_text(json.dumps(dict(record), indent=2, default=str))
    return folder


def read_folder_record(folder: str | Path) -> dict[str, Any]:
    """The ``base_models.json`` record of a checkpoint or adapter folder; empty when the folder has none."""
    record_file = Path(folder) / RECORD_FILE
    return json.loads(record_file.read_text()) if record_file.is_file() else {}


def check_adapter_folder(folder: str | Path, base: torch.nn.Module, base_name: str = "") -> None:
    """Raise ``ValueError`` unless the adapter folder was written for ``base`` (its fingerprint, adapters left out).

    Args:
        folder: a folder written by :func:`write_adapter_folder` (or a checkpoint folder holding ``base_models.json``).
        base: the model the adapters are about to be loaded onto (with or without adapters in it already).
        base_name: its path or config, for the message.
    """
    check_base_record(read_folder_record(folder), base_fingerprint(unwrap(base)), str(folder), base_name)


class TrainedWeightsSaveHandler(BaseSaveHandler):
    """Writes what ``Checkpoint`` hands it under ``dirname``, on ``save_on_rank`` only (see the module docstring).

    Args:
        dirname: the folder of the checkpoints (``models/``).
        base_fingerprint: the fingerprint of the base model (:mod:`common.weights.fingerprint`).
        base_model_name_or_path: the base weights' path; empty for a model built from a config and init seed.
        record: more header entries (method, configs of the trained parts, LoRA settings).
        to_save: the same mapping as the ``Checkpoint``'s, so PEFT objects are written with ``save_pretrained``;
            None writes only safetensors.
        save_on_rank: the rank that writes (Ignite's convention; 0).
        model_pt: the file or folder name (as Ignite gives it) whose state is also written as ``<dirname>/model.pt``
            (a folder's objects flattened, ``<key>.<name>``); empty: none.
        training_rows: the rows of the train split; their manifest, count and fingerprint go into the record
            (:func:`common.engines.checkpoint_provenance.training_data_record`), with a ``run_id`` of this run, so
            evaluate and inference can say which run's weights they load and refuse another data set's.
    """

    def __init__(
        self,
        dirname: str | Path,
        base_fingerprint: str,
        base_model_name_or_path: str | None = "",
        record: Mapping[str, Any] | None = None,
        to_save: Mapping[str, Any] | None = None,
        save_on_rank: int = 0,
        model_pt: str = "",
        training_rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.dirname = Path(dirname)
        self.record = {
            **dict(record or {}),
            **base_record(base_fingerprint, base_model_name_or_path),
            **training_data_record(training_rows),
            RUN_KEY: new_run_id(),
        }
        self.to_save = dict(to_save or {})
        self.save_on_rank = save_on_rank
        self.model_pt = model_pt
        self._superseded: list[str] = []
        self.context: dict[str, Any] = {}  # set by EngineCheckpoint before each save: epoch, score sign
        if idist.get_rank() == save_on_rank:  # a save killed mid-swap: put the previous folder back, drop staging
            for action in clean_interrupted_writes(self.dirname):
                logger.warning("%s: %s (left by an interrupted checkpoint write)", self.dirname, action)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        header = dict(self.record)
        if "epoch" in self.context:
            header["epoch"] = self.context["epoch"]
        if metadata and metadata.get("score_name"):
            name, priority = metadata["score_name"], metadata.get("priority")
            header.update(score_name=name, priority=priority)  # priority: the score, negated if lower is better
            header[name] = priority * self.context.get("score_sign", 1.0)
        path = self.dirname / filename
        single = not any(isinstance(v, Mapping) for v in checkpoint.values())
        if filename.endswith(".safetensors"):
            if not single:
                raise ValueError(f"{filename}: a safetensors checkpoint holds one object; got {sorted(checkpoint)}")
            save_safetensors(checkpoint, path, header)
            if filename == self.model_pt:
                save_model_pt(checkpoint, self.dirname / "model.pt", header)
        else:
            basename = (metadata or {}).get("basename", "model")  # the to_save key of a single object
            parts = {basename: checkpoint} if single else dict(checkpoint)
            with atomic_directory(path) as staging:
                for key, state in parts.items():
                    obj = self.to_save.get(key)
                    if obj is not None and _is_peft(obj):
                        write_adapter_folder(obj, staging if single else staging / key, header)
                    else:
                        save_safetensors(state, staging / f"{key}.safetensors", header)
                (staging / RECORD_FILE).write_text(json.dumps(header, indent=2, default=str))
            if filename == self.model_pt:
                state, configs = _flat_trained_state(parts, self.to_save)
                save_model_pt(state, self.dirname / "model.pt", {**header, **configs})
        logger.info("saved %s", path)
        for old in self._superseded:
            if old != filename:
                target = self.dirname / old
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        """Mark ``filename`` superseded; Ignite calls this right before writing its replacement, which deletes it
        once the new file is complete (a fixed file name, as ``model.safetensors``, is simply overwritten)."""
        if idist.get_rank() == self.save_on_rank:
            self._superseded.append(filename)
