"""The two fine-tuning stages of the report generator (Lu et al., arXiv 2312.01504).

Stage 1: the vision encoder and the LLM frozen; only the projector (the soft visual prompts) trains.
Stage 2: the projector plus LoRA adapters in the LLM (PEFT); the vision encoder stays frozen unless LoRA targets are
given for it too (R2GenGPT's "delta" mode puts LoRA on Swin's query/value).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.methods.report_gen.model import ReportGenerator
from common.peft.lora import apply_lora, parameter_summary
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["configure_stage", "trainable_parameter_names"]


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def configure_stage(
    model: ReportGenerator,
    stage: int,
    lora_rank: int = 16,
    lora_alpha: float = 16,
    lora_dropout: float = 0.05,
    lora_targets: Sequence[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"),
    vision_lora_targets: Sequence[str] | str | None = None,
) -> ReportGenerator:
    """Freeze and add adapters for ``stage`` (1 or 2), in place; returns ``model``.

    Args:
        model: the composed report generator (call once per model: stage 2 wraps the LLM with PEFT).
        stage: 1 (projector only) or 2 (projector + LoRA in the LLM).
        lora_rank, lora_alpha, lora_dropout: LoRA hyper-parameters (stage 2).
        lora_targets: LLM module names for LoRA (``["q_proj", "v_proj"]`` for Llama, ``["c_attn"]`` for GPT-2).
        vision_lora_targets: module names of the vision encoder for optional LoRA there (stage 2); None keeps it frozen.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    _freeze(model.vision_encoder)
    _freeze(model.language_model)
    for param in model.projector.parameters():
        param.requires_grad_(True)
    if stage == 2:
        model.language_model = apply_lora(
            model.language_model,
            lora_targets,
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            log_summary=False,
        )
        if vision_lora_targets:
            model.vision_encoder.model = apply_lora(
                model.vision_encoder.model,
                vision_lora_targets,
                rank=lora_rank,
                alpha=lora_alpha,
                dropout=lora_dropout,
                log_summary=False,
            )
    logger.info("report generator stage %d: %s", stage, parameter_summary(model))
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients (what a stage trains)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]
