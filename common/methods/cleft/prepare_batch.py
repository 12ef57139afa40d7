"""``prepare_batch`` for CLEFT: images to the device, captions built (report or label template) and tokenized.

Captions follow the official recipe when built from labels: ``template.format(<positive class names>)``,
lower-cased (the official code lower-cases and joins the finding names with spaces). Tokenization happens here,
padded to the longest caption of the batch, with the EOS the text encoder always appends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from common.data.report_cleaning import clean_report
from common.text.causal_lm_encoder import CausalLMEncoder
from monai.data import MetaTensor

__all__ = ["CLEFTPrepareBatch", "captions_from_labels", "label_matrix"]

CAPTION_SOURCES = ("labels", "report")


def label_matrix(batch: Mapping[str, Any], class_names: Sequence[str]) -> torch.Tensor:
    """The 0/1 class columns of a collated batch as a ``(B, K)`` tensor; a missing column is a named error."""
    missing = [name for name in class_names if name not in batch]
    if missing:
        raise ValueError(
            f"class name(s) {missing} are not label columns of the data; "
            f"the batch has columns {sorted(map(str, batch))}"
        )
    return torch.stack([torch.as_tensor(batch[name]).float().reshape(-1) for name in class_names], dim=1)


def captions_from_labels(labels: torch.Tensor, class_names: Sequence[str], template: str) -> list[str]:
    """One caption per row: ``template`` filled with the lower-cased names of the positive classes."""
    captions = []
    for row in labels:
        names = " ".join(class_names[k].lower() for k in torch.nonzero(row > 0.5).flatten().tolist())
        captions.append(template.format(names).strip())
    return captions


def _source_names(batch: Mapping[str, Any], image_key: str) -> list[str]:
    image = batch.get(image_key)
    meta = getattr(image, "meta", None) or {}
    names = meta.get("filename_or_obj")
    return list(names) if isinstance(names, (list, tuple)) else []


class CLEFTPrepareBatch:
    """Turn a collated batch dict into ``(inputs, targets)`` for a CLEFT network.

    Args:
        text_encoder: tokenizes captions (EOS appended, truncation counted). ``None`` for image-only batches.
        class_names: label columns, in label-index order.
        caption_source: ``"labels"`` (template over positive class names, the CheXpert recipe) or ``"report"``.
        caption_template: with one ``{}`` for the class names.
        report_key, image_key: batch keys.
        require_single_label: targets are class indices; a row with no positive class is an error naming it.
        report_sections: report sections kept as the caption (e.g. ``["findings", "impression"]``); None keeps all.
        prompt_names: the text of each class in label captions (default: the class names).
    """

    def __init__(
        self,
        text_encoder: CausalLMEncoder | None,
        class_names: Sequence[str] | None = None,
        caption_source: str = "labels",
        caption_template: str = "this is a chest x ray of a patient with {}",
        report_key: str = "report",
        image_key: str = "image",
        require_single_label: bool = True,
        report_sections: Sequence[str] | None = None,
        prompt_names: Sequence[str] | None = None,
    ) -> None:
        if caption_source not in CAPTION_SOURCES:
            raise ValueError(f"caption_source must be one of {CAPTION_SOURCES}, got {caption_source!r}")
        if text_encoder is not None and caption_source == "labels" and not class_names:
            raise ValueError("caption_source='labels' needs class_names")
        self.text_encoder = text_encoder
        self.class_names = list(class_names or [])
        self.caption_source = caption_source
        self.caption_template = caption_template
        self.report_key = report_key
        self.image_key = image_key
        self.require_single_label = require_single_label
        self.report_sections = list(report_sections) if report_sections else None
        self.prompt_names = list(prompt_names) if prompt_names else self.class_names
        if len(self.prompt_names) != len(self.class_names):
            raise ValueError(f"{len(self.prompt_names)} class_prompt_names for {len(self.class_names)} class_names")

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Class indices ``(B,)`` (the first positive class, as the official code) or None without class names."""
        if not self.class_names:
            return None
        labels = label_matrix(batch, self.class_names)
        empty = torch.nonzero(labels.max(dim=1).values < 0.5).flatten().tolist()
        if empty and self.require_single_label:
            sources = _source_names(batch, self.image_key)
            where = [sources[i] if i < len(sources) else f"row {i} of the batch" for i in empty]
            raise ValueError(f"no positive class among {self.class_names} for {where}")
        return labels.argmax(dim=1)

    def captions(self, batch: Mapping[str, Any]) -> list[str]:
        if self.caption_source == "report":
            if self.report_key not in batch:
                raise ValueError(f"caption_source='report' but the batch has no '{self.report_key}' field")
            return [clean_report(str(text), sections=self.report_sections) for text in batch[self.report_key]]
        return captions_from_labels(label_matrix(batch, self.class_names), self.prompt_names, self.caption_template)

    def __call__(
        self, batch: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        if self.image_key not in batch:
            raise ValueError(f"the batch has no '{self.image_key}' field; it has {sorted(map(str, batch))}")
        image = batch[self.image_key]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        if image.ndim != 4:
            raise ValueError(
                f"'{self.image_key}' must be a batch of 2D images (B, C, H, W), got shape {tuple(image.shape)} "
                f"from {_source_names(batch, self.image_key)[:3]}"
            )
        inputs = {self.image_key: image.to(device=device, non_blocking=non_blocking, **kwargs)}
        if self.text_encoder is not None:
            tokens = self.text_encoder.tokenize(self.captions(batch))
            inputs.update({k: v.to(device=device, non_blocking=non_blocking) for k, v in tokens.items()})
        targets = self.targets(batch)
        return inputs, (targets.to(device) if targets is not None else None)
