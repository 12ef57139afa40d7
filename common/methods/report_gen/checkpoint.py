"""Checkpoints of the report generator that hold only what was trained: the projector and the LoRA adapters.

Layout of a checkpoint folder::

    projector.safetensors          the projector's weights (safetensors, no pickle)
    llm_lora/                      PEFT folder (adapter_config.json + adapter_model.safetensors), stage 2 only
    vision_lora/                   PEFT folder, only when LoRA was put on the vision encoder
    base_models.json               which base models the adapters belong to

The folder is written under a temporary name and swapped in with ``os.replace``, so an interrupted save never
leaves a half-written checkpoint in place of the previous one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from peft import PeftModel
from safetensors.torch import load_file, save_file

from common.data.atomic_io import atomic_directory
from common.methods.report_gen.model import ReportGenerator
from common.peft.lora import load_lora_folder, load_lora_state_dict, save_lora_folder

logger = logging.getLogger(__name__)

__all__ = ["ReportGenCheckpointSaver", "load_report_gen_checkpoint", "save_report_gen_checkpoint"]

PROJECTOR_FILE = "projector.safetensors"


def _unwrap(module: Any) -> Any:
    """The network inside DDP / DataParallel."""
    return getattr(module, "module", module)


def save_report_gen_checkpoint(
    model: ReportGenerator, directory: str | Path, record: dict[str, Any] | None = None
) -> Path:
    """Write the projector (and the LoRA adapters, when present) to ``directory``, atomically.

    Args:
        model: the report generator (or DDP around it).
        directory: the checkpoint folder; replaced as a whole.
        record: what the adapters belong to (base model paths/configs), written to ``base_models.json``.
    """
    model = _unwrap(model)
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()}
        save_file(state, str(tmp / PROJECTOR_FILE), metadata={"format": "pt", "projector_type": model.projector.kind})
        if isinstance(model.language_model, PeftModel):
            save_lora_folder(model.language_model, tmp / "llm_lora")
        if isinstance(model.vision_encoder.model, PeftModel):
            save_lora_folder(model.vision_encoder.model, tmp / "vision_lora")
        (tmp / "base_models.json").write_text(json.dumps(record or {}, indent=2, default=str))
    return directory


def _load_adapters(owner: Any, attribute: str, folder: Path) -> None:
    """Load a PEFT folder into ``owner.<attribute>``: into the existing adapters, or wrapping the base model."""
    current = getattr(owner, attribute)
    if isinstance(current, PeftModel):
        load_lora_state_dict(current, load_file(str(folder / "adapter_model.safetensors")))
    else:
        setattr(owner, attribute, load_lora_folder(current, folder, is_trainable=False))


# what must match between training and reuse; paths may differ between machines (checked by folder name only)
_STRICT_KEYS = ("vision_config", "llm_config", "projector_type", "prompt_template")
_PATH_KEYS = ("image_model_path", "llm_path")


def check_base_models(directory: str | Path, expected: dict[str, Any]) -> None:
    """Compare ``expected`` with the checkpoint's ``base_models.json``; raise on another architecture or prompt.

    The base model of a path-loaded LLM is recognised by its folder name (``open_llama_7b_v2``), so a copy of the same
    weights elsewhere loads; another folder name, or another config / projector / prompt template, is an error:
    adapters and a projector applied to other frozen weights produce plausible-looking nonsense.
    """
    record_file = Path(directory) / "base_models.json"
    if not record_file.is_file():
        logger.warning("%s has no base_models.json: cannot check which base models it belongs to", directory)
        return
    record = json.loads(record_file.read_text())
    expected = json.loads(json.dumps(expected, default=str))
    problems = []
    for key in _STRICT_KEYS:
        mine, theirs = expected.get(key), record.get(key)
        path_key = {"vision_config": "image_model_path", "llm_config": "llm_path"}.get(key)
        loaded_from_path = bool(path_key and (expected.get(path_key) or record.get(path_key)))  # config unused then
        if key in record and key in expected and mine != theirs and not loaded_from_path:
            problems.append(f"{key}: checkpoint {theirs!r}, now {mine!r}")
    for key in _PATH_KEYS:
        mine, theirs = expected.get(key) or "", record.get(key) or ""
        if key in record and key in expected and Path(mine).name != Path(theirs).name:
            problems.append(f"{key}: checkpoint {theirs!r}, now {mine!r}")
    if problems:
        raise ValueError(f"checkpoint {directory} was trained on other base models or prompt: " + "; ".join(problems))


def load_report_gen_checkpoint(
    model: ReportGenerator, directory: str | Path, load_adapters: bool = True, expected_record: dict | None = None
) -> ReportGenerator:
    """Load a checkpoint written by :func:`save_report_gen_checkpoint` into ``model`` (in place; returned).

    Args:
        model: a report generator with the same base models.
        directory: the checkpoint folder.
        load_adapters: also load the LoRA folders (False loads only the projector: the start of stage 2).
        expected_record: the base-model record of the current config (see :func:`check_base_models`); None skips it.
    """
    if expected_record is not None and Path(directory).is_dir():
        check_base_models(directory, expected_record)
    target = _unwrap(model)
    directory = Path(directory)
    projector_file = directory / PROJECTOR_FILE
    if not projector_file.is_file():
        raise FileNotFoundError(f"no report generator checkpoint at {directory} ({PROJECTOR_FILE} missing)")
    state = load_file(str(projector_file))
    expected = target.projector.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    }
    if set(state) != set(expected) or mismatched:
        raise ValueError(
            f"{projector_file} does not fit the projector: keys in file {sorted(state)}, expected {sorted(expected)}, "
            f"shape (file, model) mismatches {mismatched}"
        )
    target.projector.load_state_dict(state)
    if load_adapters:
        if (directory / "llm_lora").is_dir():
            _load_adapters(target, "language_model", directory / "llm_lora")
        if (directory / "vision_lora").is_dir():
            _load_adapters(target.vision_encoder, "model", directory / "vision_lora")
    logger.info("loaded report generator checkpoint %s", directory)
    return model


class ReportGenCheckpointSaver:
    """Ignite handler: save the trained weights to ``save_dir`` every ``save_interval`` epochs and at the end; with
    an ``evaluator``, also keep the best epoch by its ``key_metric`` in ``best_dir``.

    R2GenGPT keeps the checkpoint with the best validation score rather than the last one; ``best_dir`` does that
    (attach this handler after the ``ValidationHandler``, so the evaluator has scored the epoch). Only rank 0 writes.

    Args:
        save_dir: folder of the latest checkpoint.
        network: the report generator (or DDP around it).
        save_interval: save every this many epochs.
        record: base-model record written with the weights.
        evaluator: the validation engine whose ``state.metrics`` holds ``key_metric``.
        key_metric: metric to maximise (the generation writer puts ``BLEU-4``, ``CIDEr``, ... there).
        best_dir: folder of the best checkpoint (default ``<save_dir>_best``).
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: ReportGenerator,
        save_interval: int = 1,
        record: dict | None = None,
        evaluator: Engine | None = None,
        key_metric: str = "BLEU-4",
        best_dir: str | Path | None = None,
    ):
        self.save_dir = Path(save_dir)
        self.network = network
        self.save_interval = max(int(save_interval), 1)
        self.record = record or {}
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.best_dir = Path(best_dir) if best_dir else self.save_dir.with_name(self.save_dir.name + "_best")
        self.best_value = float("-inf")
        self._fresh_scores = False
        self._saved_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._mark_scored)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_if_best)

    def _mark_scored(self, evaluator: Engine) -> None:
        self._fresh_scores = True

    def __call__(self, engine: Engine) -> None:
        if _is_secondary_rank() or self._saved_epoch == engine.state.epoch:  # COMPLETED after a saved last epoch
            return
        self._saved_epoch = engine.state.epoch
        save_report_gen_checkpoint(self.network, self.save_dir, {**self.record, "epoch": engine.state.epoch})
        logger.info("saved report generator checkpoint to %s (epoch %d)", self.save_dir, engine.state.epoch)

    def save_if_best(self, engine: Engine) -> None:
        """Save to ``best_dir`` when the evaluator has just scored this epoch better than any before."""
        if not self._fresh_scores or _is_secondary_rank():  # the evaluator did not run after this epoch
            return
        self._fresh_scores = False
        value = self.evaluator.state.metrics.get(self.key_metric)
        if value is None:
            logger.warning(
                "no %r among the validation metrics %s; best checkpoint not updated",
                self.key_metric,
                sorted(self.evaluator.state.metrics),
            )
            return
        if value > self.best_value:
            self.best_value = float(value)
            record = {**self.record, "epoch": engine.state.epoch, self.key_metric: self.best_value}
            save_report_gen_checkpoint(self.network, self.best_dir, record)
            logger.info(
                "new best %s %.4f at epoch %d: saved to %s", self.key_metric, value, engine.state.epoch, self.best_dir
            )


def _is_secondary_rank() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
