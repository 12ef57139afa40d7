"""Checkpoints that hold only what was trained, as safetensors, written atomically; and their strict reload.

A checkpoint records which base model it belongs to in the safetensors header (``metadata``), so a head or an
adapter is never silently applied to other frozen weights. Loading never unpickles: ``safetensors`` only.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.data.atomic_io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "unwrap",
    "trained_state_dict",
    "save_safetensors",
    "load_trained_weights",
    "read_checkpoint_metadata",
    "check_base_model",
    "SafetensorsSaver",
]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )


def trained_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``), detached on CPU; frozen base weights are left out."""
    return {n: p.detach().cpu().contiguous() for n, p in unwrap(model).named_parameters() if p.requires_grad}


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``state_dict`` to ``path`` atomically (temp file + rename): a crash never leaves a half file."""
    path = Path(path)
    header = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=header)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def check_base_model(header: Mapping[str, str], source: str = "checkpoint", **expected: Any) -> None:
    """Raise if a checkpoint header records another base model than ``expected`` (e.g. other encoder weights).

    Values are compared as the JSON :func:`save_safetensors` wrote; a key the header lacks is not checked.
    """
    for key, value in expected.items():
        value = value if isinstance(value, str) else json.dumps(value, default=str)
        if key in header and header[key] != value:
            mine, theirs = (
                json.loads(value) if value.startswith("{") else value,
                json.loads(header[key]) if header[key].startswith("{") else header[key],
            )
            differing = (
                sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                if isinstance(mine, dict) and isinstance(theirs, dict)
                else []
            )
            raise ValueError(
                f"{source} was trained with another {key}"
                + (f" (differs in {differing})" if differing else "")
                + ": use the same model weights, preprocessing and pooling as in training"
            )


def load_trained_weights(
    model: torch.nn.Module, path: str | Path, expected_metadata: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Load a checkpoint from :func:`save_safetensors` into ``model``.

    Every key must exist in the model with the same shape, and every trainable parameter must be in the
    file; otherwise the error lists the offending keys. ``expected_metadata`` entries (e.g. the base model's
    fingerprint) must match the file's header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, or set the checkpoint path)")
    module = unwrap(model)
    state = load_file(str(path))
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
    if expected_metadata:
        check_base_model(read_checkpoint_metadata(path), source=str(path), **expected_metadata)
    module.load_state_dict(state, strict=False)
    logger.info("loaded %d trained tensors from %s", len(state), path)
    return model


class SafetensorsSaver:
    """Ignite handler that writes the trained weights as safetensors (rank 0 only), MONAI-handler style.

    With ``key_metric`` it attaches to the validation evaluator and writes whenever that metric improves (the
    best model); without it, it attaches to the trainer and writes once training completes (the final model).

    Args:
        save_dir: the folder (``models/``).
        network: the trained network (DDP-wrapped or not).
        file_name: ``model.safetensors`` for the best, ``model_final.safetensors`` for the final weights.
        key_metric: evaluator metric that decides "best"; None saves at ``Events.COMPLETED``.
        metadata: header entries recording the base model (encoder identities, network config).
        state_dict_fn: what to save (default: :func:`trained_state_dict`, the parameters that train).
        greater_is_better: direction of ``key_metric``.
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        file_name: str = "model.safetensors",
        key_metric: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        state_dict_fn: Callable[[torch.nn.Module], Mapping[str, torch.Tensor]] = trained_state_dict,
        greater_is_better: bool = True,
    ) -> None:
        self.path = Path(save_dir) / file_name
        self.network = network
        self.key_metric = key_metric
        self.metadata = dict(metadata or {})
        self.state_dict_fn = state_dict_fn
        self.sign = 1.0 if greater_is_better else -1.0
        self.best = -math.inf

    @staticmethod
    def _is_writer() -> bool:
        return (
            not (torch.distributed.is_available() and torch.distributed.is_initialized())
            or torch.distributed.get_rank() == 0
        )

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED if self.key_metric else Events.COMPLETED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        header = {**self.metadata, "epoch": engine.state.epoch}
        if self.key_metric:
            value = engine.state.metrics.get(self.key_metric)
            if value is None:
                raise KeyError(f"key metric '{self.key_metric}' not computed; metrics: {sorted(engine.state.metrics)}")
            if math.isnan(value) or self.sign * value <= self.best:
                return
            self.best = self.sign * value
            header.update(key_metric=self.key_metric, key_metric_value=value)
            logger.info("epoch %d: best %s = %.4f", engine.state.epoch, self.key_metric, value)
        if self._is_writer():
            logger.info("epoch %d: saved %s", engine.state.epoch, self.save(header))

    def save(self, header: Mapping[str, Any]) -> Path:
        """Write the checkpoint; subclasses that save another format (e.g. a PEFT folder) override this."""
        return save_safetensors(self.state_dict_fn(self.network), self.path, header)
