"""Checkpoints that hold only what trained: Ignite's ``Checkpoint`` with our save handler, and their strict reload.

Best tracking, ``n_saved``, ``score_function`` / ``score_name``, ``global_step_transform`` and writing on rank 0
only are Ignite's :class:`ignite.handlers.Checkpoint`; :class:`EngineCheckpoint` adds the ``attach(engine)`` that
MONAI's handler lists call, and :class:`~common.engines.save_handler.TrainedWeightsSaveHandler` writes the files
(safetensors with the base-model record in the header, or PEFT adapter folders). A bundle config reads::

    {"_target_": "common.engines.checkpoint.EngineCheckpoint",
     "to_save": {"model": "$common.engines.checkpoint.TrainedWeights(@network)"},
     "save_handler": {"_target_": "common.engines.save_handler.TrainedWeightsSaveHandler", "dirname": "@ckpt_dir",
                      "base_fingerprint": "...", "record": "@base_model_record"},
     "filename_pattern": "model.safetensors",
     "score_function": "$common.engines.checkpoint.metric_score('val_score')"}

Loading never unpickles arbitrary objects: ``safetensors``, or the model-zoo's ``models/model.pt`` (written by the
save handler beside the safetensors file, read with ``torch.load(weights_only=True)``); either way the recorded
base-model fingerprint is checked. ``model.pt`` is the network's own flat state dict, as every model-zoo bundle ships
it, so MONAI's ``CheckpointLoader(load_dict={"model": net})`` and ``ckpt_export`` (no ``key_in_ckpt``) load it,
strictly where it holds the whole network. Its base-model record rides in the state dict's own metadata (where
PyTorch keeps each module's ``version``, and which ``load_state_dict`` passes by):
``state_dict._metadata[""]["base_record"]``, without local paths
(:func:`~common.weights.fingerprint.portable_record`), read by :func:`read_checkpoint_metadata`.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.data.atomic_io import atomic_path
from common.weights.fingerprint import check_base_record, portable_record
from common.weights.pickle_refusal import pickle_refusal
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

__all__ = [
    "EngineCheckpoint",
    "TrainedWeights",
    "load_trained_weights",
    "metric_score",
    "read_checkpoint_metadata",
    "read_trained_state",
    "save_model_pt",
    "save_safetensors",
    "trained_state_dict",
    "unwrap",
]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel wrappers (the one place this is written)."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )


def trained_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``), detached on CPU; frozen base weights are left out."""
    return {n: p.detach().cpu().contiguous() for n, p in unwrap(model).named_parameters() if p.requires_grad}


class TrainedWeights:
    """What Ignite's ``Checkpoint`` saves of a network: ``state_dict()`` is :func:`trained_state_dict`.

    Ignite calls ``state_dict()`` on every object of ``to_save``; a whole network's would carry its frozen base.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trained_state_dict(self.network)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        unwrap(self.network).load_state_dict(state_dict, strict=False)


def metric_score(metric_name: str, greater_is_better: bool = True, engine: Engine | None = None) -> Callable:
    """Ignite ``score_function``: ``engine.state.metrics[metric_name]``, negated when lower is better.

    A NaN score is ``-inf`` (never "best"); a metric that was not computed is a ``KeyError`` naming those that were
    (on ranks other than 0, which never write, it is ``-inf``: some writers score on rank 0 only).

    Args:
        metric_name: the evaluator's metric (``val_zero_shot``, ``BLEU-4``, ...).
        greater_is_better: False for a loss-like metric.
        engine: read the metrics of this engine (the evaluator) instead of the one the checkpoint is attached to,
            e.g. when the checkpoint runs on the trainer after the ``ValidationHandler``.
    """
    sign = 1.0 if greater_is_better else -1.0

    def score(attached: Engine) -> float:
        metrics = (engine or attached).state.metrics
        if metric_name not in metrics and idist.get_rank() > 0:
            return -math.inf  # a writer that scores on rank 0 only (it is the rank that saves, too)
        if metric_name not in metrics:
            raise KeyError(f"key metric {metric_name!r} not computed; metrics: {sorted(metrics)}")
        value = float(metrics[metric_name])
        return -math.inf if math.isnan(value) else sign * value

    score.sign = sign  # the save handler writes the metric itself (sign * priority) into the record
    return score


class EngineCheckpoint(Checkpoint):
    """:class:`ignite.handlers.Checkpoint` that attaches itself, so it can stand in a MONAI handler list.

    Args:
        to_save, save_handler, **kwargs: as :class:`ignite.handlers.Checkpoint` (``score_function``, ``n_saved``,
            ``filename_pattern``, ``global_step_transform``, ``greater_or_equal``, ``save_on_rank``, ...).
        events: Ignite event name(s) to save at (``EPOCH_COMPLETED`` on an evaluator for the best model,
            ``COMPLETED`` on the trainer for the final one).
        every: for ``EPOCH_COMPLETED``, save every this many epochs.
    """

    def __init__(
        self,
        to_save: Mapping,
        save_handler: Any,
        events: str | Sequence[str] = "EPOCH_COMPLETED",
        every: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(to_save, save_handler, **kwargs)
        self.ext = "safetensors"  # Ignite's default file names end in .pt; ours are safetensors
        self.events = [events] if isinstance(events, str) else list(events)
        self.every = max(int(every), 1)

    def __call__(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
        """Tell the save handler the epoch and the score's sign (for its record), then run Ignite's Checkpoint;
        a non-finite score writes nothing (Ignite would write the first one whatever it is)."""
        if self.score_function is not None and not math.isfinite(self.score_function(engine)):
            if idist.get_rank() == 0:
                logger.warning(
                    "epoch %s: the validation score %s is not finite (NaN): no checkpoint written for it",
                    engine.state.epoch,
                    self.score_name or "",
                )
            return  # a NaN-scored model is never the best; TrainingOutcomeCheck fails a run that scored none
        context = getattr(self.save_handler, "context", None)
        if isinstance(context, dict):
            context.update(epoch=engine.state.epoch, score_sign=getattr(self.score_function, "sign", 1.0))
        super().__call__(engine, *args, **kwargs)

    def attach(self, engine: Engine) -> None:
        for name in self.events:
            event = Events[name]
            engine.add_event_handler(event(every=self.every) if name == "EPOCH_COMPLETED" else event, self)


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``state_dict`` to ``path`` atomically (temp file + rename); non-string header values as JSON."""
    path = Path(path)
    header = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=header)
    return path


MODEL_PT_RECORD_KEY = "base_record"  # in the root module's entry of the state dict's _metadata
_NESTED_STATE_KEY = "model"  # the earlier form {"model": state_dict, "base_record": record}, still read


def save_model_pt(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write the model-zoo's ``model.pt`` atomically: ``state_dict`` flat, its record in ``_metadata[""]``.

    Only tensors and strings, so ``torch.load(path, weights_only=True)`` reads it (an ``OrderedDict`` with its
    ``_metadata``, as ``module.state_dict()`` returns). The record holds the same entries as the safetensors header
    (base-model fingerprint and name, method, configs, score), every local path cut to its last component
    (:func:`~common.weights.fingerprint.portable_record`): the file is what a bundle ships.
    """
    path = Path(path)
    record = portable_record({k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in metadata.items()})
    state = OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in state_dict.items())
    state._metadata = OrderedDict(getattr(state_dict, "_metadata", None) or {})  # type: ignore[attr-defined]
    state._metadata[""] = {**state._metadata.get("", {}), MODEL_PT_RECORD_KEY: record}  # type: ignore[attr-defined]
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def _read_model_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, record) of a ``model.pt``: the flat form :func:`save_model_pt` writes, or the earlier nested one."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or not ours
        raise ValueError(
            f"checkpoint {path} is not a readable torch file (not a zip archive): damaged or cut short; train again, "
            "or restore it from a copy"
        )
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # more than tensors and strings: never unpickled
        raise ValueError(pickle_refusal(path, err, "write it again with the bundle's training")) from None
    except (RuntimeError, EOFError, OSError) as err:  # not a torch zip file, or one cut short
        raise ValueError(
            f"checkpoint {path} is not a readable torch file ({err}): damaged or cut short; train again, or restore "
            "it from a copy"
        ) from None
    if isinstance(content, Mapping) and all(isinstance(v, torch.Tensor) for v in content.values()):
        root = (getattr(content, "_metadata", None) or {}).get("", {})
        return dict(content), dict(root.get(MODEL_PT_RECORD_KEY) or {})
    if isinstance(content, Mapping) and isinstance(content.get(_NESTED_STATE_KEY), Mapping):
        return dict(content[_NESTED_STATE_KEY]), dict(content.get(MODEL_PT_RECORD_KEY) or {})  # written before 0.2.0
    raise ValueError(
        f"{path}: expected a flat state dict (tensor values, as training writes models/model.pt); got "
        f"{sorted(content)[:10] if isinstance(content, Mapping) else type(content).__name__}: write it again with "
        "the bundle's training or scripts/package_bundle.py --model"
    )


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The base-model record of ``path``: the safetensors header, or the ``base_record`` of a ``model.pt``
    (``state_dict._metadata[""]``; a ``model.pt`` re-saved without it records nothing, which loading refuses).

    A missing file, or one that is not a readable checkpoint, is an error naming it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, or set the checkpoint path)")
    if Path(path).suffix == ".pt":
        return _read_model_pt(Path(path))[1]
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as err:
        raise ValueError(
            f"checkpoint {path} is not a readable safetensors file ({err}): damaged or cut short; train again, or "
            "restore it from a copy"
        ) from None


def read_trained_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a safetensors file, or a ``model.pt``."""
    if Path(path).suffix == ".pt":
        return _read_model_pt(Path(path))[0]
    return load_file(str(path))


def load_trained_weights(
    model: torch.nn.Module, path: str | Path, base_fingerprint: str | None = None, base_name: str = ""
) -> torch.nn.Module:
    """Load a checkpoint of trained weights into ``model`` (in place; returned).

    Every key must exist in the model with the same shape, and every trainable parameter must be in the
    file; otherwise the error lists the offending keys.

    Args:
        model: the network (DDP-wrapped or not).
        path: a safetensors file written by :func:`save_safetensors` / the save handler, or its ``model.pt``.
        base_fingerprint: the fingerprint of the base ``model`` stands on; it must equal the one in the header
            (see :func:`common.weights.fingerprint.check_base_record`). None skips the check (test fixtures).
        base_name: the path or config of that base, for the error message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, or set the checkpoint path)")
    if base_fingerprint is not None:
        check_base_record(read_checkpoint_metadata(path), base_fingerprint, str(path), base_name)
    module = unwrap(model)
    state = read_trained_state(path)
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    shape_mismatch = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    missing = sorted(n for n, p in module.named_parameters() if p.requires_grad and n not in state)
    if unexpected or shape_mismatch or missing:
        raise ValueError(
            f"checkpoint {path} does not fit {type(module).__name__}: unexpected keys {unexpected[:10]}, "
            f"shape mismatches {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shape_mismatch[:10]]}, "
            f"missing trainable keys {missing[:10]}"
        )
    module.load_state_dict(state, strict=False)
    logger.info("loaded %d trained tensors from %s", len(state), path)
    return model
