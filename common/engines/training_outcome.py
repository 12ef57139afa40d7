"""A training run that trained nothing, or never scored its validation, fails instead of exiting 0.

Without this check such a run ends "successfully" while ``models/`` still holds an earlier run's best checkpoint
(the demo's), which the next evaluate or inference would load. :class:`TrainingOutcomeCheck` is a handler of the
trainer (it stands in a MONAI ``train_handlers`` list):

- when attached (before any training): the train loader must yield at least one batch; ``drop_last`` with
  fewer rows than ``batch_size`` yields none, and the error names the split's size, the batch size and what to do;
- at ``COMPLETED``: at least one iteration ran, and, where a ``validator`` and ``key_metric`` are given, at least
  one validation produced a finite key metric (a NaN score is never "best", so no best checkpoint of this run
  exists); the error names the metric, its values and the checkpoint folder left as it was.

Failing, rather than writing the untrained or unscored weights as "best", keeps ``model.safetensors`` meaning "the
best-validated weights of a run"; the record (:mod:`common.engines.checkpoint_provenance`) then makes evaluate
refuse the earlier run's checkpoint that is still there.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["TrainingOutcomeCheck", "TrainingOutcomeError"]


class TrainingOutcomeError(ValueError):
    """A training run ended without trained or validated weights (an input problem: a ValueError, so the last
    line of a failed bundle run is this message, see :mod:`common.errors`)."""


class TrainingOutcomeCheck:
    """Fail a run that trained nothing or could not score validation (see the module docstring).

    Args:
        validator: the evaluator run by the ``ValidationHandler``; None checks only that training ran.
        key_metric: the validator's metric the best checkpoint is chosen by (``BLEU-4``, ...); None: the
            validator's key metric (MONAI's ``state.key_metric_name``).
        ckpt_dir: the checkpoint folder, for the message.
        split: the name of the training split, for the message.
    """

    def __init__(
        self, validator: Engine | None = None, key_metric: str | None = None, ckpt_dir: str = "", split: str = "train"
    ) -> None:
        self.validator = validator
        self.key_metric = key_metric
        self.ckpt_dir = str(ckpt_dir)
        self.split = split
        self.scores: list[float] = []

    def attach(self, engine: Engine) -> None:
        """Check the train loader now (MONAI's ``Workflow.run`` returns without a word on an empty one, so no
        event would fire), then at ``COMPLETED`` check the outcome."""
        if getattr(engine, "data_loader", None) is not None:
            self.check_batches(engine.data_loader)
        engine.add_event_handler(Events.COMPLETED, self.check_outcome)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self.record_score)

    def check_batches(self, loader: Any) -> None:
        """Raise :class:`TrainingOutcomeError` when ``loader`` (a DataLoader) yields no batch."""
        try:
            batches = len(loader)
        except TypeError:  # an iterable without a length: the COMPLETED check still applies
            return
        if batches > 0:
            return
        rows = len(getattr(loader, "dataset", ()) or ())
        batch_size = getattr(loader, "batch_size", None)
        drop_last = getattr(loader, "drop_last", False)
        hint = (
            f"with drop_last a batch needs batch_size={batch_size} rows: give the {self.split} split at least "
            f"{batch_size} rows or pass --batch_size {max(rows, 1)} (or smaller)"
            if drop_last
            else f"add rows to the {self.split} split"
        )
        raise TrainingOutcomeError(
            f"the {self.split} split has {rows} row(s), which makes 0 training batches (minimum: "
            f"{batch_size if drop_last else 1} rows); nothing would be trained: {hint}"
        )

    def record_score(self, validator: Engine) -> None:
        self.key_metric = self.key_metric or getattr(validator.state, "key_metric_name", None)
        value = validator.state.metrics.get(self.key_metric)
        self.scores.append(float("nan") if value is None else float(value))

    def check_outcome(self, engine: Engine) -> None:
        where = f" ({self.ckpt_dir} is left as it was: an earlier run's checkpoint there is not this run's)"
        if engine.state.iteration == 0:
            raise TrainingOutcomeError(f"training ran 0 iterations on the {self.split} split{where}")
        if self.validator is None or idist.get_rank() > 0:
            return  # some writers score on rank 0 only; rank 0, the one that writes checkpoints, decides
        if not self.scores:
            logger.warning("no validation ran during training (check val_interval): no best checkpoint was chosen")
            return
        if not any(math.isfinite(s) for s in self.scores):
            shown = ", ".join(f"{s}" for s in self.scores[:5])
            raise TrainingOutcomeError(
                f"validation never produced a finite {self.key_metric} ({len(self.scores)} validation(s): {shown}), "
                f"so no best checkpoint of this run was written{where}; check the val split (both classes of every "
                "label present for an AUROC, enough rows) and the training loss (NaN?)"
            )
