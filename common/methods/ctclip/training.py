"""Training pieces of the ctclip_lora bundle: LoRA on both encoders, batch preparation, the two objectives.

MedCT-VLM (Alzubaidi et al., arXiv 2512.00597) adds LoRA (Hu et al., ICLR 2022) to the attention of CT-CLIP's
vision and text encoders and trains only the adapters. The objective is a config choice:

- ``"clip"``: symmetric InfoNCE (CLIP, Radford et al. 2021) on (volume, report) pairs, which keeps the model
  open-vocabulary; negatives are gathered across ranks under DDP.
- ``"prompt_pair"``: for every labelled pathology, softmax over the logits of "X is present." and
  "X is not present." and cross-entropy to the label (VocabFine of CT-CLIP uses MSE of the same softmax).

All three callables follow the house pattern: ``prepare_batch`` gives ``(inputs dict, targets)``, the network
takes the dict, the loss takes ``(outputs dict, targets)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from common.losses.clip_loss import ClipLoss
from common.methods.ctclip.model import CTCLIP, pair_logits
from common.peft.lora import apply_lora, parameter_summary
from monai.inferers import SimpleInferer
from peft import PeftModel
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "OBJECTIVES",
    "BF16AutocastInferer",
    "CTCLIPLoss",
    "CTCLIPPrepareBatch",
    "apply_ctclip_lora",
    "build_prompts",
]

OBJECTIVES = ("clip", "prompt_pair")


def apply_ctclip_lora(
    model: CTCLIP,
    rank: int = 24,
    alpha: float = 48,
    dropout: float = 0.0,
    targets_vision: Sequence[str] = ("to_q", "to_kv"),
    targets_text: Sequence[str] = ("query", "key", "value"),
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """Freeze CT-CLIP (codebook, projections and temperature included) and add LoRA to both encoders.

    The VQ codebook is a buffer, so it is never trained; its EMA update is switched off too, so ``train()``
    mode cannot rewrite it, and the straight-through estimator carries gradients to the vision adapters.

    Args:
        model: a :class:`~common.methods.ctclip.model.CTCLIP`.
        rank, alpha, dropout: LoRA hyper-parameters (``lora_rank``, ``lora_alpha``, ``lora_dropout``).
        targets_vision: CTViT attention Linear names (``to_q``, ``to_kv``, ``to_out``).
        targets_text: BERT self-attention Linear names (``query``, ``key``, ``value``).
        gradient_checkpointing: recompute encoder blocks in the backward pass.

    Returns:
        The PEFT-wrapped model; its summary (trainable / total parameters) is printed.
    """
    model.visual_transformer.vq.ema_update = False
    if gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    vision = [rf"visual_transformer\.enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.{t}" for t in targets_vision]
    text = [rf"text_transformer\.encoder\.layer\.\d+\.attention\.self\.{t}" for t in targets_text]
    if not vision and not text:
        raise ValueError("lora_targets_vision and lora_targets_text are both empty: nothing to train")
    _check_names(model, targets_vision, "visual_transformer", "lora_targets_vision")
    _check_names(model, targets_text, "text_transformer", "lora_targets_text")
    peft_model = apply_lora(model, "|".join(vision + text), rank=rank, alpha=alpha, dropout=dropout, log_summary=False)
    summary = parameter_summary(peft_model)
    print(
        f"CT-CLIP LoRA (r={rank}, alpha={alpha}, vision {list(targets_vision)}, text {list(targets_text)}): {summary}"
    )
    return peft_model


def _check_names(model: nn.Module, targets: Sequence[str], prefix: str, key: str) -> None:
    linear = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)
    }
    unknown = [t for t in targets if t not in linear]
    if unknown:
        raise ValueError(f"{key}: {unknown} name no Linear layer of {prefix}; choose among {sorted(linear)}")


def build_prompts(
    class_names: Sequence[str], present: str = "{} is present.", absent: str = "{} is not present."
) -> list[str]:
    """``[present_0, absent_0, present_1, absent_1, ...]`` for the pathologies (CT-CLIP's zero-shot prompts)."""
    if not class_names:
        raise ValueError("at least one pathology name is needed")
    return [template.format(name) for name in class_names for template in (present, absent)]


class CTCLIPPrepareBatch:
    """``prepare_batch`` for MONAI engines: tokenises reports (padded to the longest, not to 512) and prompts.

    Args:
        tokenizer: the text encoder's Hugging Face tokenizer.
        objective: ``"clip"`` (needs ``report``) or ``"prompt_pair"`` (needs the label columns).
        class_names: pathology names = label columns of the manifest.
        max_length: truncation length of reports (BERT's 512).
        with_reports: also tokenise reports when the objective does not need them (retrieval evaluation).
        require_labels: a batch without the label columns is an error (default: with ``"prompt_pair"``);
            inference sets it to False.
        image_key, report_key: batch keys.

    Returns (from ``__call__``): ``(inputs, labels)`` where inputs holds ``image`` and the token tensors, and
    labels is (B, K) float or None when the batch has no label columns.
    """

    def __init__(
        self,
        tokenizer: Any,
        objective: str = "clip",
        class_names: Sequence[str] = (),
        max_length: int = 512,
        with_reports: bool = False,
        require_labels: bool | None = None,
        present_template: str = "{} is present.",
        absent_template: str = "{} is not present.",
        image_key: str = "image",
        report_key: str = "report",
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "prompt_pair" and not class_names:
            raise ValueError("objective 'prompt_pair' needs class_names (the label columns)")
        self.tokenizer = tokenizer
        self.objective = objective
        self.class_names = list(class_names)
        self.max_length = max_length
        self.with_reports = with_reports or objective == "clip"
        self.require_labels = objective == "prompt_pair" if require_labels is None else require_labels
        self.image_key, self.report_key = image_key, report_key
        self.prompts = build_prompts(self.class_names, present_template, absent_template) if class_names else []
        self._prompt_tokens: dict[str, dict[str, torch.Tensor]] = {}

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}

    def prompt_tokens(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Tokens of the 2K prompts (2K, L), tokenised once per device: they never change, and re-tokenising 2,000
        prompts per batch made the per-volume cost grow with the number of class names."""
        key = str(device)
        if key not in self._prompt_tokens:
            self._prompt_tokens[key] = self.tokenize(self.prompts, device)
        return self._prompt_tokens[key]

    def labels(self, batch: Mapping[str, Any], device: torch.device | str | None = None) -> torch.Tensor | None:
        if not self.class_names:
            return None
        missing = [c for c in self.class_names if c not in batch]
        if missing:
            if self.require_labels:
                raise ValueError(f"label column(s) {missing} missing from the batch; keys are {sorted(batch)}")
            return None
        return torch.stack([torch.as_tensor(batch[c]).float() for c in self.class_names], dim=1).to(device)

    def __call__(
        self, batch: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False, **_: Any
    ):
        if self.image_key not in batch:
            raise ValueError(f"batch has no '{self.image_key}' key; keys are {sorted(batch)}")
        inputs: dict[str, torch.Tensor] = {
            "image": torch.as_tensor(batch[self.image_key]).to(device, non_blocking=non_blocking)
        }
        if self.with_reports:
            if self.report_key not in batch:
                raise ValueError(
                    f"objective {self.objective!r} needs the '{self.report_key}' field; batch keys are {sorted(batch)}"
                )
            inputs.update(self.tokenize(batch[self.report_key], device))
        if self.objective == "prompt_pair":
            prompts = self.prompt_tokens(device)
            inputs["prompt_input_ids"], inputs["prompt_attention_mask"] = (
                prompts["input_ids"],
                prompts["attention_mask"],
            )
        # the CLIP objective needs no labels (and the training manifest may not have parsed them)
        labels = self.labels(batch, device) if (self.objective == "prompt_pair" or self.require_labels) else None
        return inputs, labels


class CTCLIPLoss(nn.Module):
    """The training objective: ``"clip"`` InfoNCE on (volume, report) or ``"prompt_pair"`` CE on labels.

    Args:
        objective: ``"clip"`` or ``"prompt_pair"``.
        gather_with_grad: gather features across ranks with gradient (``"clip"`` under DDP).
    """

    def __init__(self, objective: str = "clip", gather_with_grad: bool = True) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.clip = ClipLoss(gather_with_grad=gather_with_grad, normalize=False)

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None) -> torch.Tensor:
        """Args: outputs of :meth:`CTCLIP.forward`; labels (B, K) in {0, 1} (NaN = unknown, ignored)."""
        if self.objective == "clip":
            return self.clip(outputs["image_latents"], outputs["text_latents"], outputs["logit_scale"])
        if labels is None:
            raise ValueError("objective 'prompt_pair' needs labels (the pathology label columns)")
        logits = pair_logits(outputs["image_latents"], outputs["prompt_latents"], outputs["logit_scale"])  # (B, K, 2)
        if logits.shape[:2] != labels.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, prompts give {tuple(logits.shape[:2])}")
        known = torch.isfinite(labels)
        target = (labels[known] < 0.5).long()  # class 0 = "present" prompt, class 1 = "not present"
        return F.cross_entropy(logits[known], target)


class BF16AutocastInferer(SimpleInferer):
    """``inferer`` of a MONAI trainer: the network call under ``torch.autocast(dtype=bfloat16)``, outputs in float32.

    MONAI's ``amp=True`` always builds a ``GradScaler``, which bfloat16 does not need (it has float32's exponent
    range, so gradients do not underflow). With this inferer the trainer keeps ``amp=False`` (no scaler) and the
    forward pass still runs in bfloat16; the loss is computed in float32. float16 needs the scaler: use MONAI's
    ``amp=True`` for it.

    Args:
        enabled: run under bfloat16 autocast; False: a plain :class:`~monai.inferers.SimpleInferer`.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = bool(enabled)

    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        tensors = inputs.values() if isinstance(inputs, Mapping) else [inputs]
        device_type = next(t.device.type for t in tensors if isinstance(t, torch.Tensor))
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            outputs = network(inputs, *args, **kwargs)
        if isinstance(outputs, Mapping):
            return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
        return outputs.float() if torch.is_tensor(outputs) and outputs.is_floating_point() else outputs
