"""Checkpoints of the report generator that hold only what was trained: the projector and the LoRA adapters.

Layout of a checkpoint folder (written by :class:`~common.engines.save_handler.TrainedWeightsSaveHandler` from
the objects of :func:`checkpoint_objects`, under a temporary name and swapped in as a whole)::

    projector.safetensors          the projector's weights (safetensors, no pickle; the record in its header)
    llm_lora/                      PEFT folder (adapter_config.json + adapter_model.safetensors), stage 2 only
    vision_lora/                   PEFT folder, only when LoRA was put on the vision encoder
    base_models.json               the base it belongs to (fingerprint of the vision encoder and the LLM), the
                                   projector type and prompt template, the epoch (and score of a best checkpoint)

Training also writes the last stage-2 folder as the model zoo's ``models/model.pt`` (the same tensors, keys
``projector.*`` / ``llm_lora.*`` / ``vision_lora.*``, the record with each LoRA config); it loads the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from common.engines.checkpoint import read_checkpoint_metadata, read_trained_state, unwrap
from common.engines.save_handler import TrainedWeightsSaveHandler, read_folder_record
from common.methods.report_gen.model import ReportGenerator
from common.peft.lora import load_lora_folder, load_lora_state_dict
from common.weights.fingerprint import base_fingerprint, check_base_record, combine_fingerprints
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_objects", "load_report_gen_checkpoint", "report_gen_fingerprint", "save_report_gen_checkpoint"]

PROJECTOR_FILE = "projector.safetensors"
# what must match between training and reuse beside the base weights
_STRICT_KEYS = ("projector_type", "prompt_template")


def report_gen_fingerprint(model: ReportGenerator) -> str:
    """The base-model fingerprint of a report generator: its vision encoder and LLM weights, adapters left out."""
    model = unwrap(model)
    return combine_fingerprints(base_fingerprint(model.vision_encoder), base_fingerprint(model.language_model))


def checkpoint_objects(model: ReportGenerator) -> dict[str, Any]:
    """What a checkpoint of ``model`` holds, as Ignite's ``to_save``: the projector and the PEFT models there are."""
    model = unwrap(model)
    objects: dict[str, Any] = {"projector": model.projector}
    if isinstance(model.language_model, PeftModel):
        objects["llm_lora"] = model.language_model
    if isinstance(model.vision_encoder.model, PeftModel):
        objects["vision_lora"] = model.vision_encoder.model
    return objects


def save_report_gen_checkpoint(
    model: ReportGenerator,
    directory: str | Path,
    record: dict[str, Any] | None = None,
    base_name: str = "",
    model_pt: bool = False,
) -> Path:
    """Write one checkpoint folder of ``model`` now (what the training's ``Checkpoint`` handlers write each time).

    Args:
        model: the report generator (or DDP around it).
        directory: the checkpoint folder; replaced as a whole.
        record: what else to record (base model paths/configs, projector type, prompt template).
        base_name: the LLM's path, recorded as the base's name (empty: named by its fingerprint).
        model_pt: also write the folder as ``model.pt`` beside it (what training does for ``stage2``).
    """
    directory = Path(directory)
    objects = checkpoint_objects(model)
    handler = TrainedWeightsSaveHandler(
        directory.parent,
        report_gen_fingerprint(model),
        base_name,
        record,
        to_save=objects,
        model_pt=directory.name if model_pt else "",
    )
    state = {key: obj.state_dict() for key, obj in objects.items()}  # what Ignite's Checkpoint hands the handler
    if len(state) == 1:
        handler(state["projector"], directory.name, {"basename": "projector"})
    else:
        handler(state, directory.name, {"basename": "checkpoint"})
    return directory


def _load_adapters(owner: Any, attribute: str, folder: Path) -> None:
    """Load a PEFT folder into ``owner.<attribute>``: into the existing adapters, or wrapping the base model."""
    current = getattr(owner, attribute)
    if isinstance(current, PeftModel):
        load_lora_state_dict(current, load_file(str(folder / "adapter_model.safetensors")))
    else:
        setattr(owner, attribute, load_lora_folder(current, folder, is_trainable=False))


def _prefixed(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {name[len(key) + 1 :]: tensor for name, tensor in state.items() if name.startswith(key + ".")}


def _load_adapter_state(owner: Any, attribute: str, state: dict[str, torch.Tensor], config_json: str) -> None:
    """Wrap ``owner.<attribute>`` with the recorded LoRA config (unless it has adapters) and load ``state``, frozen."""
    current = getattr(owner, attribute)
    if not isinstance(current, PeftModel):
        fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"peft_type", "base_model_name_or_path"}
        config = LoraConfig(**{k: v for k, v in json.loads(config_json).items() if k in fields})
        current = get_peft_model(current, config)
        setattr(owner, attribute, current)
    load_lora_state_dict(current, state)
    current.requires_grad_(False)


def load_report_gen_checkpoint(
    model: ReportGenerator,
    directory: str | Path,
    load_adapters: bool = True,
    expected_record: dict | None = None,
    base_name: str = "",
) -> ReportGenerator:
    """Load a checkpoint folder into ``model`` (in place; returned), after checking it belongs to ``model``'s base.

    Args:
        model: a report generator with the same base models (vision encoder and LLM weights).
        directory: the checkpoint folder, or the ``models/model.pt`` written from it.
        load_adapters: also load the LoRA folders (False loads only the projector: the start of stage 2).
        expected_record: the current config's record; its projector type and prompt template must match.
        base_name: the LLM path of ``model``, for the error message.

    Raises:
        ValueError: the checkpoint belongs to other base weights, or to another projector type or prompt.
    """
    target = unwrap(model)
    directory = Path(directory)
    from_model_pt = directory.suffix == ".pt"
    projector_file = directory if from_model_pt else directory / PROJECTOR_FILE
    if not projector_file.is_file():
        raise FileNotFoundError(f"no report generator checkpoint at {directory} ({projector_file.name} missing)")
    record = read_checkpoint_metadata(directory) if from_model_pt else read_folder_record(directory)
    check_base_record(record, report_gen_fingerprint(target), str(directory), base_name)
    expected = json.loads(json.dumps(expected_record or {}, default=str))
    problems = [
        f"{key}: checkpoint {record[key]!r}, now {expected[key]!r}"
        for key in _STRICT_KEYS
        if key in record and key in expected and record[key] != expected[key]
    ]
    if problems:
        raise ValueError(f"checkpoint {directory} was trained with another projector or prompt: " + "; ".join(problems))
    flat = read_trained_state(directory) if from_model_pt else {}
    state = _prefixed(flat, "projector") if from_model_pt else load_file(str(projector_file))
    own = target.projector.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    }
    if set(state) != set(own) or mismatched:
        raise ValueError(
            f"{projector_file} does not fit the projector: keys in file {sorted(state)}, expected {sorted(own)}, "
            f"shape (file, model) mismatches {mismatched}"
        )
    target.projector.load_state_dict(state)
    if load_adapters and from_model_pt:
        for key, owner, attribute in (
            ("llm_lora", target, "language_model"),
            ("vision_lora", target.vision_encoder, "model"),
        ):
            if _prefixed(flat, key):
                _load_adapter_state(owner, attribute, _prefixed(flat, key), record[f"{key}_config"])
    elif load_adapters:
        if (directory / "llm_lora").is_dir():
            _load_adapters(target, "language_model", directory / "llm_lora")
        if (directory / "vision_lora").is_dir():
            _load_adapters(target.vision_encoder, "model", directory / "vision_lora")
    logger.info("loaded report generator checkpoint %s", directory)
    return model
