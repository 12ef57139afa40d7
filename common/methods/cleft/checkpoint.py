"""CLEFT checkpoints: base-model fingerprint, strict loading, PEFT-folder export of the text LoRA, inference model.

The safetensors checkpoint (LoRA + projections + logit scale + the ViT where it trained) is written during
training by :class:`common.engines.checkpoint.SafetensorsSaver`; this adds the adapter folder that
``peft.PeftModel.from_pretrained(<BioMedLM>, folder)`` reads, next to it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.engines.checkpoint import load_trained_weights, unwrap
from common.methods.cleft.model import CLEFTClassifier
from common.peft.context_prompt import ContextPrompt
from common.peft.lora import save_lora_folder

logger = logging.getLogger(__name__)

__all__ = ["export_text_lora", "frozen_weights_fingerprint", "inference_classifier", "load_cleft_checkpoint"]


def export_text_lora(network: torch.nn.Module, checkpoint_path: str | Path, folder: str | Path) -> Path | None:
    """Load ``checkpoint_path`` (the best weights) into ``network`` and write its text LoRA to ``folder``.

    Returns the folder, or None when the text encoder has no LoRA (nothing to export) or on non-zero ranks.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return None
    model = unwrap(network)
    if not hasattr(model.text_encoder.model, "peft_config"):
        logger.info("text encoder has no LoRA adapters; no PEFT folder written")
        return None
    load_trained_weights(model, checkpoint_path)
    path = save_lora_folder(model.text_encoder.model, folder)
    logger.info("wrote the text LoRA of %s in PEFT format to %s", checkpoint_path, path)
    return path


def frozen_weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the parameters that do not train (names, shapes, bytes): the base model a checkpoint needs.

    The checkpoint holds only what trained; this fingerprint, stored in its header, makes loading onto other
    frozen weights (another LM, another random seed of a demo model) an error instead of silent garbage.
    """
    digest = hashlib.sha256()
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            continue
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_cleft_checkpoint(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a stage-1 checkpoint strictly, checking that it was trained on these frozen weights."""
    return load_trained_weights(model, path, expected_metadata={"frozen_weights": frozen_weights_fingerprint(model)})


def inference_classifier(
    clip: torch.nn.Module,
    class_names: Sequence[str],
    template: str,
    prompt_checkpoint: str | Path | None = None,
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
    load_trained_weights(classifier, path)
    return classifier.eval()
