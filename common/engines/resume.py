"""Resume a killed training from its last complete epoch, without losing the best checkpoint.

:class:`ResumeHandler` stands in a trainer's handler list. At the end of every epoch (after validation and the
best-checkpoint writers) an Ignite :class:`~ignite.handlers.Checkpoint` writes ``<ckpt_dir>/resume/<stage>.pt``
(``torch.save`` of state dicts only, written atomically, so ``torch.load(weights_only=True)`` reads it and a kill
during the write leaves the previous one) holding:

- the trained weights (:class:`~common.engines.checkpoint.TrainedWeights`), the optimizer, the LR scheduler and the
  AMP grad scaler (where there is one), the trainer's epoch and iteration;
- the random states (torch CPU and CUDA, numpy, python, and the train dataset's random transforms), so the resumed
  epochs see the same batches and augmentations;
- the best-metric record of every scored checkpoint writer (Ignite's ``Checkpoint.state_dict``: score and file) and
  the evaluator's best metric, so a resumed run never replaces a better ``model.safetensors`` by a worse one.

A rerun of the same run (same identity, :mod:`common.engines.run_record`) loads it with
``Checkpoint.load_objects`` when the trainer starts, before any other handler runs (the handler stands first where the
trainer validates at start, as ctclip_lora's does); the random states are restored when the first resumed epoch starts.
A run of a different identity in the same ``ckpt_dir`` is refused, and so is ``resume=False`` where a run is
recorded: nothing written by the other run is overwritten; the message says to pick a new ``ckpt_dir``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from common.data.atomic_io import atomic_path
from common.engines.checkpoint import TrainedWeights, unwrap
from common.engines.checkpoint_provenance import RUN_KEY
from common.engines.run_record import RUN_RECORD_FILE, identity_differences, recorded_identity, run_id, write_run_record
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.transforms import Transform

logger = logging.getLogger(__name__)

__all__ = ["RESUME_FOLDER", "EvaluatorBest", "RandomStates", "ResumeHandler", "ResumeSaveHandler", "load_resume_state"]

RESUME_FOLDER = "resume"


def _transform_random_states(root: Any) -> list[np.random.RandomState]:
    """The ``R`` of every random MONAI transform under ``root`` (a dataset or transform), in a fixed order."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)
        elif isinstance(obj, Transform):
            if isinstance(getattr(obj, "R", None), np.random.RandomState):
                found.append(obj.R)
            for value in vars(obj).values():
                visit(value)

    visit(getattr(root, "transform", root))
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = state
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": gauss,
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return ("MT19937", keys, state["pos"], state["has_gauss"], state["gauss"])


class RandomStates:
    """The random states a training draws from, as tensors and numbers (``weights_only``-loadable).

    Args:
        dataset: the train dataset (or its transform); the states of its random MONAI transforms are included
            (with ``num_workers=0`` they carry over from epoch to epoch; with workers they are reseeded from torch).
    """

    def __init__(self, dataset: Any = None) -> None:
        self.transform_states = _transform_random_states(dataset) if dataset is not None else []

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "transforms": [_numpy_state(r.get_state()) for r in self.transform_states],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
        if len(state["transforms"]) != len(self.transform_states):
            raise ValueError(
                f"resume state: {len(state['transforms'])} random transform states saved, the train transforms "
                f"have {len(self.transform_states)}; the transforms changed since the run started (use a new ckpt_dir)"
            )
        for generator, saved in zip(self.transform_states, state["transforms"]):
            generator.set_state(_numpy_tuple(saved))


class EvaluatorBest:
    """MONAI's ``best_metric`` / ``best_metric_epoch`` of an evaluator's state (what its logs call the best)."""

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, float]:
        state = self.evaluator.state
        return {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["epoch"]


class ResumeSaveHandler(BaseSaveHandler):
    """Writes the resume state with ``torch.save`` atomically under ``dirname``, on ``save_on_rank`` only."""

    def __init__(self, dirname: str | Path, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname)
        self.save_on_rank = save_on_rank

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with atomic_path(self.dirname / filename) as tmp:
            torch.save(dict(checkpoint), tmp)

    def remove(self, filename: str) -> None:
        """Nothing: the state has one fixed name and is replaced atomically by the next one."""


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """The resume state at ``path``, read with ``torch.load(weights_only=True)`` (never unpickles code)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"resume state {path} cannot be read safely ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"it is refused rather than unpickled: move it away to restart the run from its first epoch"
        ) from err


def _scored(checkpoints: Sequence[Any]) -> list[Checkpoint]:
    return [c for c in checkpoints if isinstance(c, Checkpoint) and c.score_function is not None]


def _stage_name(checkpoints: Sequence[Checkpoint]) -> str:
    if not checkpoints:
        raise ValueError("ResumeHandler: give `stage` or the scored checkpoint writers (`checkpoints`)")
    pattern = str(checkpoints[0].filename_pattern)
    return pattern[: -len(".safetensors")] if pattern.endswith(".safetensors") else pattern


class ResumeHandler:
    """Resume a trainer from ``<ckpt_dir>/resume/<stage>.pt`` and write that state every epoch (module docstring).

    Args:
        ckpt_dir: the run's checkpoint folder (``models/``); the run record and ``resume/`` go there.
        resume: False refuses to start where a run is recorded for this stage (instead of resuming it).
        identity: what the config knows identifies the run (manifest digest, dataset folder, seed); the trainer's
            optimizer, trainable parameters, epochs, batches and world size and the writers' base-model record are
            added (see :mod:`common.engines.run_record`).
        checkpoints: handlers among which the scored Ignite ``Checkpoint`` writers (the best model) are found; their
            best-score records are saved and restored. Others in the list are ignored.
        evaluator: the validation evaluator, whose MONAI best-metric record is restored too.
        lr_scheduler: the LR scheduler, if any.
        stage: the stage's name in the record; default: the first scored writer's file name (``model``,
            ``prompt_tuned``, ``adapters``, ``stage1_best``).
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        resume: bool = True,
        identity: Mapping[str, Any] | None = None,
        checkpoints: Sequence[Any] = (),
        evaluator: Engine | None = None,
        lr_scheduler: Any = None,
        stage: str | None = None,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.resume = resume if isinstance(resume, bool) else str(resume).lower() in ("1", "true", "yes")
        self.identity = dict(identity or {})
        self.checkpoints = _scored(checkpoints)
        self.evaluator = evaluator
        self.lr_scheduler = lr_scheduler
        self.stage = stage or _stage_name(self.checkpoints)
        self.state_path = self.ckpt_dir / RESUME_FOLDER / f"{self.stage}.pt"
        self.resumed_from: int | None = None  # the epoch a resumed run continued after
        self._writer: Checkpoint | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects: dict[str, Any] = {
            "trainer": engine,
            "model": TrainedWeights(engine.network),
            "optimizer": engine.optimizer,
            "random": RandomStates(getattr(engine.data_loader, "dataset", None)),
        }
        if self.lr_scheduler is not None:
            objects["lr_scheduler"] = self.lr_scheduler
        if getattr(engine, "scaler", None) is not None:
            objects["grad_scaler"] = engine.scaler
        for i, checkpoint in enumerate(self.checkpoints):
            objects[f"best_{i}"] = checkpoint
        if self.evaluator is not None:
            objects["evaluator_best"] = EvaluatorBest(self.evaluator)
        return objects

    def run_identity(self, engine: Engine) -> dict[str, Any]:
        """The config's identity values plus what the trainer and the writers know (module docstring)."""
        trainable = [(n, list(p.shape)) for n, p in unwrap(engine.network).named_parameters() if p.requires_grad]
        optimizer = engine.optimizer
        defaults = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (bool, int, float, str, tuple, list))}
        loader = engine.data_loader
        # the save handler's run id is drawn per process (each rank, each restart): not part of what the run is
        records = [
            {k: v for k, v in r.items() if k != RUN_KEY}
            for r in (getattr(c.save_handler, "record", None) for c in self.checkpoints)
            if r
        ]
        return {
            **self.identity,
            "stage": self.stage,
            "base_record": next(iter(records), None),
            "trainable": {"count": len(trainable), "sha256": hashlib.sha256(repr(trainable).encode()).hexdigest()},
            "optimizer": {"class": type(optimizer).__name__, **defaults},
            "lr_scheduler": type(self.lr_scheduler).__name__ if self.lr_scheduler is not None else None,
            "max_epochs": engine.state.max_epochs,
            "epoch_length": len(loader) if hasattr(loader, "__len__") else engine.state.epoch_length,
            "batch_size": getattr(loader, "batch_size", None),
            "world_size": idist.get_world_size(),
        }

    def _refuse(self, why: str) -> None:
        raise ValueError(
            f"{why}. Nothing there is overwritten. For a fresh run pass --ckpt_dir <a new folder>; to continue the "
            f"recorded run, rerun it with its own settings; to discard it, delete {self.ckpt_dir / RUN_RECORD_FILE}, "
            f"{self.state_path} and the stage's checkpoints"
        )

    def _start(self, engine: Engine) -> None:
        objects = self._objects(engine)
        identity = self.run_identity(engine)
        recorded = recorded_identity(self.ckpt_dir, self.stage)
        if recorded is not None and run_id(recorded) != run_id(identity):
            changes = "; ".join(identity_differences(recorded, identity))
            self._refuse(f"{self.ckpt_dir} holds another run of stage {self.stage!r} (it differs in: {changes})")
        if not self.resume and (recorded is not None or self.state_path.exists()):
            self._refuse(f"resume is false but {self.ckpt_dir} already holds a run of stage {self.stage!r}")
        if recorded is None and self.state_path.exists():
            self._refuse(f"{self.state_path} has no entry in {self.ckpt_dir / RUN_RECORD_FILE} to say which run it is")
        if self.state_path.exists():
            self._restore(engine, objects)
        elif idist.get_rank() == 0:
            write_run_record(self.ckpt_dir, self.stage, identity)
        if self._writer is None:
            self._writer = Checkpoint(
                objects, ResumeSaveHandler(self.state_path.parent), filename_pattern=self.state_path.name, n_saved=1
            )
            # added now, at STARTED: it runs after every EPOCH_COMPLETED handler attached with the trainer
            # (validation, best checkpoints, LR schedule), so the state it writes includes the epoch's best record
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._writer)

    def _restore_random(self, engine: Engine, random_states: RandomStates, state: Mapping[str, Any]) -> None:
        """Once, at the first resumed epoch's start (before its DataLoader iterator is made)."""
        random_states.load_state_dict(state)
        engine.remove_event_handler(self._restore_random, Events.EPOCH_STARTED)

    def _restore(self, engine: Engine, objects: Mapping[str, Any]) -> None:
        state = load_resume_state(self.state_path)
        missing = sorted(set(objects) - set(state))
        if missing:
            self._refuse(f"{self.state_path} lacks {missing} (written by another configuration)")
        Checkpoint.load_objects({k: v for k, v in objects.items() if k != "random"}, state)
        # the random states wait for the first resumed epoch: a validation at start (ctclip_lora) draws from torch's
        # generator (its DataLoader iterator's base seed), which the uninterrupted run did before it saved the state
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_random, objects["random"], state["random"])
        for checkpoint in self.checkpoints:  # a best file deleted since: forget its score, so the next epoch writes
            folder = Path(getattr(checkpoint.save_handler, "dirname", self.ckpt_dir))
            saved = checkpoint.state_dict()["_saved"]
            checkpoint.load_state_dict({"_saved": [(p, name) for p, name in saved if (folder / name).exists()]})
        self.resumed_from = engine.state.epoch
        best = [
            f"{name} {c.score_name}={priority * getattr(c.score_function, 'sign', 1.0):.6g}"
            for c in self.checkpoints
            for priority, name in c.state_dict()["_saved"]
            if math.isfinite(priority)
        ]
        logger.info(
            "resumed stage %r from %s: epoch %d of %d done (best: %s); pass --resume false with a new --ckpt_dir "
            "to start afresh",
            self.stage,
            self.state_path,
            engine.state.epoch,
            engine.state.max_epochs,
            ", ".join(best) or "none yet",
        )
