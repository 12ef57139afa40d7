"""CLEFT: a DINOv2 image tower and a LoRA-tuned causal-LM text tower, contrastively aligned; and its classifier.

Du et al., "CLEFT: Language-Image Contrastive Learning with Efficient Large Language Model and Prompt
Fine-Tuning", MICCAI 2024 (arXiv 2407.21011). Each tower is followed by one linear projection to 512 (the
official ``--linear_proj``), features are L2-normalised and compared by cosine times a learnable scale
initialised at 1/0.07 and, unlike the official code, clamped (at 100, as CLIP).

Stage 2 (:class:`CLEFTClassifier` with a :class:`~common.peft.context_prompt.ContextPrompt`) scores an image
against K class prompts ``[context] + class name + EOS`` and is trained with cross-entropy over the classes;
without a context it is the zero-shot classifier over ``template.format(class name)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from common.losses.clip_loss import LogitScale
from common.peft.context_prompt import ContextPrompt
from common.peft.lora import parameter_summary
from common.text.causal_lm_encoder import CausalLMEncoder
from common.vision.dinov2_encoder import DINOv2Encoder
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["CHEXPERT_TEMPLATE", "CLEFT", "CLEFTClassifier"]

CHEXPERT_TEMPLATE = "this is a chest x ray of a patient with {}"


class CLEFT(nn.Module):
    """The dual encoder of CLEFT stage 1.

    Args:
        image_encoder: DINOv2 tower, image ``(B, 3, H, W)`` -> ``(B, D_img)``.
        text_encoder: causal-LM tower (LoRA inside), tokens -> ``(B, D_txt)``.
        embed_dim: shared embedding width (512).
        temperature_init: initial temperature tau of the learnable logit scale ``1/tau`` (CLIP: 0.07).
        max_logit_scale: clamp of the logit scale (100).
        freeze_image_encoder: freeze the ViT (the official ``--freeze_vit``; off in the paper's stage 1).
        image_key: batch key of the image tensor.
    """

    def __init__(
        self,
        image_encoder: DINOv2Encoder,
        text_encoder: CausalLMEncoder,
        embed_dim: int = 512,
        temperature_init: float = 0.07,
        max_logit_scale: float = 100.0,
        freeze_image_encoder: bool = False,
        image_key: str = "image",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = nn.Linear(image_encoder.hidden_size, embed_dim)
        self.text_projection = nn.Linear(text_encoder.hidden_size, embed_dim)
        self.logit_scale = LogitScale(temperature_init=temperature_init, max_scale=max_logit_scale)
        self.image_key = image_key
        if freeze_image_encoder:
            self.image_encoder.requires_grad_(False)
        logger.info("CLEFT trainable parameters: %s", parameter_summary(self))

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> L2-normalised ``(B, embed_dim)``."""
        return F.normalize(self.image_projection(self.image_encoder(pixel_values)), dim=-1)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, L)`` tokens (optionally after a ``(P, H)`` context) -> L2-normalised ``(B, embed_dim)``."""
        return F.normalize(self.text_projection(self.text_encoder(input_ids, attention_mask, prefix_embeds)), dim=-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Args: batch with ``image`` ``(B, 3, H, W)`` and, when text is given, ``input_ids``/``attention_mask``
        ``(B, L)``. Returns ``image_features``/``text_features`` ``(B, embed_dim)`` and the scalar ``logit_scale``."""
        out = {"logit_scale": self.logit_scale()}
        if self.image_key in batch:
            out["image_features"] = self.encode_image(batch[self.image_key])
        if "input_ids" in batch:
            out["text_features"] = self.encode_text(batch["input_ids"], batch["attention_mask"])
        return out


class CLEFTClassifier(nn.Module):
    """Classify images against K class prompts: zero-shot (template) or prompt-tuned (learned context).

    Args:
        clip: a (stage-1) :class:`CLEFT`.
        class_names: the K label names, in label-index order.
        template: zero-shot caption with one ``{}`` for the class name; used when ``context`` is None.
        context: the learned context placed before ``" " + class name`` (stage 2).
        trainable: what trains besides the context: any of ``"image_encoder"``, ``"image_projection"``,
            ``"logit_scale"``. The LM, its LoRA and the text projection always stay frozen. The official code
            also trains the ViT, image projection and scale in stage 2; the paper's description freezes them.
        freeze_clip: freeze the dual encoder (except ``trainable``); default: when a context is given (stage 2).
            The zero-shot validator of stage 1 wraps the network under training and must not freeze it.
        lowercase: lower-case the class names, as the official code lower-cases captions and prompts (the
            training captions from labels are lower-cased too, so "Edema" and "edema" tokenize alike).
        prompt_names: the text written into the prompt for each class (default: the class names), e.g.
            ``"birads score 0: additional imaging required"`` for a label column ``birads_0``.
    """

    TRAINABLE_PARTS = ("image_encoder", "image_projection", "logit_scale")

    def __init__(
        self,
        clip: CLEFT,
        class_names: Sequence[str],
        template: str = CHEXPERT_TEMPLATE,
        context: ContextPrompt | None = None,
        trainable: Sequence[str] = (),
        freeze_clip: bool | None = None,
        lowercase: bool = True,
        prompt_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be a non-empty list of distinct names, got {list(class_names)}")
        if context is None and "{}" not in template:
            raise ValueError(f"zero-shot template must contain '{{}}' for the class name, got {template!r}")
        unknown = sorted(set(trainable) - set(self.TRAINABLE_PARTS))
        if unknown:
            raise ValueError(f"stage2_trainable has unknown part(s) {unknown}; choose from {self.TRAINABLE_PARTS}")
        self.clip = clip
        self.class_names = list(class_names)
        self.prompt_names = list(prompt_names) if prompt_names else list(class_names)
        if len(self.prompt_names) != len(self.class_names):
            raise ValueError(f"{len(self.prompt_names)} class_prompt_names for {len(self.class_names)} class_names")
        self.template = template
        self.context = context
        self.lowercase = lowercase
        self.frozen_parts: list[str] = []
        if freeze_clip is None:
            freeze_clip = context is not None
        if freeze_clip:
            self.clip.requires_grad_(False)
            for part in trainable:
                getattr(self.clip, part).requires_grad_(True)
            self.frozen_parts = [n for n in ("image_encoder", "text_encoder") if n not in trainable]
        elif trainable:
            raise ValueError(f"stage2_trainable={list(trainable)} needs freeze_clip=True (everything else frozen)")
        if context is not None and context.context.shape[1] != clip.text_encoder.hidden_size:
            raise ValueError(
                f"context width {context.context.shape[1]} != text encoder hidden size {clip.text_encoder.hidden_size}"
            )
        if freeze_clip:
            logger.info("CLEFT classifier trainable parameters: %s", parameter_summary(self))

    def train(self, mode: bool = True) -> CLEFTClassifier:
        """Frozen encoders stay in eval mode (no LoRA/attention dropout noise on what does not train)."""
        super().train(mode)
        for name in self.frozen_parts:
            getattr(self.clip, name).eval()
        return self

    def class_prompts(self) -> list[str]:
        """The K texts fed to the LM (after the context, if any)."""
        names = [name.lower() for name in self.prompt_names] if self.lowercase else self.prompt_names
        if self.context is None:
            return [self.template.format(name) for name in names]
        return [" " + name for name in names]  # leading space: the word's in-sentence BPE form

    def class_features(self, device: torch.device | None = None) -> torch.Tensor:
        """L2-normalised class embeddings ``(K, embed_dim)``."""
        tokens = self.clip.text_encoder.tokenize(self.class_prompts(), field="class prompt")
        device = device or self.clip.logit_scale.log_scale.device
        prefix = self.context() if self.context is not None else None
        return self.clip.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device), prefix)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Args: batch with ``image`` ``(B, 3, H, W)``. Returns ``logits`` ``(B, K)`` (scaled cosine) and
        ``probs`` ``(B, K)`` (softmax over the classes)."""
        image = batch[self.clip.image_key]
        image_features = self.clip.encode_image(image)
        logits = self.clip.logit_scale() * image_features @ self.class_features(image.device).t()
        return {"logits": logits, "probs": logits.softmax(dim=-1), "image_features": image_features}
