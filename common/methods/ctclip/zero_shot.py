"""Zero-shot iteration of CT-CLIP for MONAI's ``SupervisedEvaluator``: each volume encoded once, prompts once.

CT-CLIP's protocol (arXiv 2403.17834): per pathology, the prompts "X is present." and "X is not present.";
softmax over the pair of ``exp(temperature) * cosine`` logits; P(present) is the first entry. The official
script re-encodes the volume for every pathology (18 image passes per volume, prompts padded to 512 tokens);
here one image pass per volume is scored against all 2K prompt latents, which are encoded once per
evaluation run (the weights may change between validation rounds, never within one).

The metric over these outputs is :class:`~common.methods.ctclip.zero_shot_metric.MeanZeroShotAUROC`; the eval files
are written by :mod:`common.methods.ctclip.zero_shot_writers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from common.engines.checkpoint import unwrap
from common.methods.ctclip.inputs import check_pathology_names
from common.methods.ctclip.model import zero_shot_probabilities
from common.methods.ctclip.training import CTCLIPPrepareBatch, build_prompts
from ignite.engine import Engine

__all__ = ["ZeroShotIteration", "batch_ids"]


class ZeroShotIteration:
    """``iteration_update`` for a MONAI ``SupervisedEvaluator``: one image pass per volume.

    Output (``engine.state.output``): ``pred`` (B, K) P(present), ``label`` (B, K) or None, ``image_latents``
    (B, E), ``text_latents`` (B, E) when the batch has reports, ``id`` (B source paths).

    Args:
        prepare_batch: a :class:`~common.methods.ctclip.training.CTCLIPPrepareBatch` (tokenizer, label
            columns); its ``with_reports`` decides whether report latents are computed (retrieval).
        class_names: the pathologies to score (any names: open vocabulary).
        present_template, absent_template: the prompt pair.
        autocast_dtype: ``"bfloat16"`` to run the encoders under autocast (the VQ itself stays float32).
    """

    def __init__(
        self,
        prepare_batch: CTCLIPPrepareBatch,
        class_names: Sequence[str],
        present_template: str = "{} is present.",
        absent_template: str = "{} is not present.",
        autocast_dtype: str | None = None,
    ) -> None:
        self.prepare_batch = prepare_batch
        self.class_names = check_pathology_names(class_names)
        self.prompts = build_prompts(self.class_names, present_template, absent_template)
        self.autocast_dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
        self._prompt_latents: torch.Tensor | None = None

    def encode_prompts(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """(2K, E) latents of [present_0, absent_0, ...]."""
        same = self.prompts == self.prepare_batch.prompts
        tokens = self.prepare_batch.prompt_tokens(device) if same else self.prepare_batch.tokenize(self.prompts, device)
        return unwrap(model).encode_text(tokens["input_ids"], tokens["attention_mask"]).float()

    def __call__(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        model = engine.network
        device = engine.state.device
        model.eval()
        inputs, labels = self.prepare_batch(batchdata, device, engine.non_blocking)
        first_of_run = (engine.state.iteration - 1) % max(engine.state.epoch_length or 1, 1) == 0
        context = (
            torch.autocast(device_type=torch.device(device).type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        with torch.no_grad(), context:
            if first_of_run or self._prompt_latents is None:
                self._prompt_latents = self.encode_prompts(model, device)
            core = unwrap(model)
            image_latents = core.encode_volume(inputs["image"]).float()
            out = {
                "pred": zero_shot_probabilities(image_latents, self._prompt_latents, core.logit_scale().float()),
                "label": labels,
                "image_latents": image_latents,
            }
            if "input_ids" in inputs:
                out["text_latents"] = core.encode_text(inputs["input_ids"], inputs.get("attention_mask")).float()
        out["id"] = batch_ids(batchdata, inputs["image"].shape[0])
        engine.state.output = out
        return out


def batch_ids(batchdata: Mapping[str, Any], size: int) -> list[str]:
    """Source paths of the batch: ``source_path`` (copied before loading; not ``image_*``, which MONAI treats as
    meta dicts) or the MetaTensor's filename; the position in the batch where neither is there."""
    if "source_path" in batchdata:
        return [str(p) for p in batchdata["source_path"]]
    image = batchdata.get("image")
    meta = getattr(image, "meta", None) or batchdata.get("image_meta_dict") or {}
    names = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if names is None:
        return [str(i) for i in range(size)]
    return [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
