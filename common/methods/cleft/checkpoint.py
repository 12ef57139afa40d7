"""CLEFT checkpoints: base-model fingerprint, strict loading, PEFT-folder export of the text LoRA, inference model.

The safetensors checkpoint (LoRA + projections + logit scale + the ViT where it trained) is written during
training by Ignite's ``Checkpoint`` with :class:`~common.engines.save_handler.TrainedWeightsSaveHandler`; its
header records the base (:func:`cleft_fingerprint`: every weight that does not train), checked on every load.
:func:`export_text_lora` adds the adapter folder that ``peft.PeftModel.from_pretrained(<BioMedLM>, folder)`` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from common.data.atomic_io import atomic_directory
from common.engines.checkpoint import load_trained_weights, unwrap
from common.engines.save_handler import write_adapter_folder
from common.methods.cleft.model import CLEFTClassifier
from common.peft.context_prompt import ContextPrompt
from common.weights.fingerprint import base_fingerprint, base_record
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

__all__ = ["cleft_fingerprint", "export_text_lora", "inference_classifier", "load_cleft_checkpoint"]


def cleft_fingerprint(model: torch.nn.Module) -> str:
    """The base of a CLEFT checkpoint: every weight of ``model`` that does not train (the frozen LM, the ViT where
    frozen; in stage 2 the whole stage-1 model but the trained context). See :mod:`common.weights.fingerprint`."""
    return base_fingerprint(unwrap(model), exclude_trainable=True)


def export_text_lora(
    network: torch.nn.Module, checkpoint_path: str | Path, folder: str | Path, base_name: str = ""
) -> Path | None:
    """Load ``checkpoint_path`` (the best weights) into ``network`` and write its text LoRA to ``folder``.

    The folder is PEFT's (``PeftModel.from_pretrained(<the LM>, folder)`` loads it), written atomically, with
    ``base_model_name_or_path`` = ``base_name`` (the LM's path) or ``medvlm-base:<fingerprint of the LM>``.
    Returns the folder, or None when the text encoder has no LoRA (nothing to export) or on non-zero ranks.
    """
    if idist.get_rank() > 0:
        return None
    model = unwrap(network)
    language_model = model.text_encoder.model
    if not hasattr(language_model, "peft_config"):
        logger.info("text encoder has no LoRA adapters; no PEFT folder written")
        return None
    load_cleft_checkpoint(model, checkpoint_path, base_name)
    with atomic_directory(folder) as staging:
        write_adapter_folder(language_model, staging, base_record(base_fingerprint(language_model), base_name))
    logger.info("wrote the text LoRA of %s in PEFT format to %s", checkpoint_path, folder)
    return Path(folder)


def load_cleft_checkpoint(model: torch.nn.Module, path: str | Path, base_name: str = "") -> torch.nn.Module:
    """Load a stage-1 checkpoint strictly, checking that it was trained on these frozen weights.

    Raises:
        ValueError: the checkpoint belongs to another base (the message names both; ``base_name`` is ours).
    """
    return load_trained_weights(model, path, cleft_fingerprint(model), base_name)


def inference_classifier(
    clip: torch.nn.Module, class_names: Sequence[str], template: str, prompt_checkpoint: str | Path | None = None
) -> CLEFTClassifier:
    """The classifier for a user-named label set: zero-shot with ``template``, or with the learned context of a
    stage-2 checkpoint (the context is shared across classes, so it applies to any class names)."""
    clip = unwrap(clip)
    if not prompt_checkpoint:
        return CLEFTClassifier(clip, class_names, template=template)
    path = Path(prompt_checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"prompt_checkpoint={str(path)!r} does not exist (train prompt_tuning.json first)")
    state = load_file(str(path))
    if "context.context" not in state:
        raise ValueError(f"prompt_checkpoint {path} holds no 'context.context' (keys: {sorted(state)[:5]})")
    trainable = sorted({k.split(".")[1] for k in state if k.startswith("clip.")})
    classifier = CLEFTClassifier(
        clip, class_names, context=ContextPrompt(*state["context.context"].shape), trainable=trainable
    )
    load_trained_weights(classifier, path, cleft_fingerprint(classifier))
    return classifier.eval()
