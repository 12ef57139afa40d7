"""LoRA through Hugging Face PEFT, for any ``nn.Module`` (transformers models and our own CTViT alike).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022. Nothing here re-implements LoRA:
it configures :class:`peft.LoraConfig`, wraps with :func:`peft.get_peft_model`, and saves/loads in PEFT's own
folder format (``adapter_config.json`` + ``adapter_model.safetensors``) so ``PeftModel.from_pretrained`` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "ParameterSummary",
    "apply_lora",
    "parameter_summary",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_lora_folder",
    "load_lora_folder",
]


@dataclass(frozen=True)
class ParameterSummary:
    """Trainable and total parameter counts of a model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def parameter_summary(model: torch.nn.Module) -> ParameterSummary:
    """Count trainable and total parameters (buffers such as a VQ codebook are not parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParameterSummary(trainable=trainable, total=total)


def _check_targets_exist(model: torch.nn.Module, target_modules: Sequence[str] | str) -> None:
    """Fail with the list of candidate names when a LoRA target matches no module (PEFT's message is terse)."""
    if isinstance(target_modules, str):  # a regex: PEFT checks it with re.fullmatch
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear_names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"lora target module(s) {missing} match no module of {type(model).__name__}; "
            f"its Linear layers are named {linear_names}"
        )


def apply_lora(
    model: torch.nn.Module,
    target_modules: Sequence[str] | str,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] | None = None,
    bias: str = "none",
    log_summary: bool = True,
) -> PeftModel:
    """Freeze ``model`` and add LoRA adapters to ``target_modules``.

    Args:
        model: any module; its parameters are frozen except the adapters and ``modules_to_save``.
        target_modules: module-name suffixes (``["query", "value"]``) or one regex over full names.
        rank: LoRA rank ``r``.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``).
        dropout: dropout on the LoRA input.
        modules_to_save: modules trained in full next to the adapters (e.g. a projection head).
        bias: PEFT's bias mode (``"none"``, ``"all"``, ``"lora_only"``).
        log_summary: log trainable vs total parameters.

    Returns:
        The wrapped :class:`peft.PeftModel`; its forward is the base model's.
    """
    if rank <= 0:
        raise ValueError(f"lora_rank must be a positive integer, got {rank}")
    _check_targets_exist(model, target_modules)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        bias=bias,
    )
    peft_model = get_peft_model(model, config)
    if log_summary:
        logger.info("LoRA r=%d alpha=%s on %s: %s", rank, alpha, target_modules, parameter_summary(peft_model))
    return peft_model


def lora_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter weights alone (and ``modules_to_save``), keyed as PEFT saves them."""
    return get_peft_model_state_dict(model)


def load_lora_state_dict(model: PeftModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by :func:`lora_state_dict`; any adapter key left unset is an error."""
    result = set_peft_model_state_dict(model, state_dict)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter state dict does not fit the model: missing {missing}, unexpected {result.unexpected_keys}"
        )


def save_lora_folder(model: PeftModel, directory: str | Path) -> Path:
    """Write the adapters in PEFT's folder format (``adapter_config.json``, ``adapter_model.safetensors``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def load_lora_folder(base_model: torch.nn.Module, directory: str | Path, is_trainable: bool = False) -> PeftModel:
    """Load adapters written by :func:`save_lora_folder` (or any PEFT LoRA folder) onto ``base_model``."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter folder at {directory} (adapter_config.json missing)")
    return PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
