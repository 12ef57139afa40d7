"""Radiology report generator: vision encoder -> projector -> soft visual prompts in a causal LM.

Lu et al., "Effectively Fine-tune to Improve Large Multimodal Models for Radiology Report Generation" (arXiv
2312.01504), with the concrete layout of R2GenGPT (Wang et al., Meta-Radiology 2023): visual tokens from the last
hidden state of a frozen image backbone, a Linear(+LayerNorm) or MLP projector into the LLM's embedding space, the
projected tokens placed inside a text prompt, and a decoder-only LLM (Llama/OpenLLaMA, GPT-2, any
``AutoModelForCausalLM``) that continues the prompt with the report. Generation is Hugging Face ``generate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from common.peft.soft_visual_prompt import VisualProjector, place_soft_prompts
from common.vision.hf_vision_encoder import HFVisionEncoder
from common.weights.hf_loading import enable_activation_checkpointing, load_or_build_model
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

__all__ = ["ReportGenerator", "SoftPromptTower"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ReportGenerator(nn.Module):
    """Compose a vision encoder, a :class:`VisualProjector` and a causal LM.

    Args:
        vision_encoder: module mapping ``(B, C, H, W)`` images to ``(B, N, D_v)`` tokens with a ``hidden_size``.
        language_model: a Hugging Face causal LM (possibly wrapped by PEFT).
        projector_type: ``"linear"`` or ``"mlp"``.
        projector_hidden_dim: hidden width of the MLP projector.
        autocast_dtype: ``"bfloat16"`` / ``"float16"`` to run forward and generation under autocast, or None.
        gradient_checkpointing: recompute the LLM's activations in the backward pass (less memory, more time).
        image_key: batch key of the images.
    """

    def __init__(
        self,
        vision_encoder: nn.Module,
        language_model: PreTrainedModel,
        projector_type: str = "linear",
        projector_hidden_dim: int | None = None,
        autocast_dtype: str | None = None,
        gradient_checkpointing: bool = False,
        image_key: str = "image",
    ) -> None:
        super().__init__()
        if autocast_dtype and autocast_dtype not in _DTYPES:
            raise ValueError(f"autocast_dtype must be one of {sorted(_DTYPES)} or empty, got {autocast_dtype!r}")
        self.vision_encoder = vision_encoder
        self.language_model = language_model
        llm_width = int(language_model.get_input_embeddings().embedding_dim)
        self.projector = VisualProjector(vision_encoder.hidden_size, llm_width, projector_type, projector_hidden_dim)
        self.autocast_dtype = _DTYPES[autocast_dtype] if autocast_dtype else None
        self.image_key = image_key
        if gradient_checkpointing:
            # non-reentrant checkpointing keeps gradients flowing to the soft prompts although the LLM is frozen
            enable_activation_checkpointing(language_model)
            language_model.config.use_cache = False

    @classmethod
    def from_config(
        cls,
        image_model_path: str | Path | None = None,
        vision_config: Mapping[str, Any] | PretrainedConfig | None = None,
        llm_path: str | Path | None = None,
        llm_config: Mapping[str, Any] | PretrainedConfig | None = None,
        drop_cls_token: bool = False,
        llm_dtype: str | None = None,
        init_seed: int | None = None,
        **kwargs: Any,
    ) -> ReportGenerator:
        """Build from local Hugging Face folders, or from architecture configs with random weights when paths are empty.

        Args:
            image_model_path / vision_config: the image backbone (``vit``, ``dinov2``, ``swin``, ...).
            llm_path / llm_config: the causal LM (``llama``, ``gpt2``, ...).
            drop_cls_token: drop the backbone's CLS token from the visual tokens.
            llm_dtype: load the LLM weights in this dtype (``"bfloat16"`` halves a 7B model's memory).
            init_seed: seed of the random weights of models built from configs (and of the projector's initial
                weights), drawn from a forked RNG: a checkpoint holds only the projector and adapters, so the
                random base models of a demo must be rebuilt identically in stage 2, evaluation and inference.
            kwargs: passed to the constructor.
        """
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(int(init_seed))
            vision = HFVisionEncoder(image_model_path, vision_config, drop_cls_token=drop_cls_token)
            load_kwargs = {"dtype": _DTYPES[llm_dtype]} if llm_path and llm_dtype else {}
            llm = load_or_build_model(
                llm_path, llm_config, auto_class=AutoModelForCausalLM, key="llm_path", **load_kwargs
            )
            if not llm_path and llm_dtype:
                llm = llm.to(_DTYPES[llm_dtype])
            return cls(vision, llm, **kwargs)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def soft_prompts(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, N, D_llm)`` soft visual prompt tokens."""
        return _soft_prompts(self.vision_encoder, self.projector, images)

    def input_embeddings(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The LLM's input embeddings of ``batch["input_ids"]`` with the soft prompts at ``image_token_mask``.

        Returns:
            ``(B, L, D_llm)``.
        """
        for key in (self.image_key, "input_ids", "image_token_mask"):
            if key not in batch:
                raise ValueError(f"report generator batch has no {key!r} field; it has {sorted(batch)}")
        text_embeds = self.language_model.get_input_embeddings()(batch["input_ids"])
        prompts = self.soft_prompts(batch[self.image_key])
        return place_soft_prompts(text_embeds, prompts, batch["image_token_mask"])

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher-forced pass.

        Args:
            batch: ``image`` (B, C, H, W); ``input_ids``, ``attention_mask``, ``image_token_mask`` (B, L); ``labels``
                (B, L) with ``-100`` outside the report tokens
                (see :class:`common.data.report_tokenization.ReportCollator`).

        Returns:
            ``{"loss": scalar mean cross-entropy over report tokens (when labels are given), "logits": (B, L, V)}``.
        """
        with self._autocast(batch["input_ids"].device):
            embeds = self.input_embeddings(batch)
            out = self.language_model(
                inputs_embeds=embeds,
                attention_mask=batch.get("attention_mask"),
                labels=batch.get("labels"),
                use_cache=False,
            )
        result = {"logits": out.logits}
        if out.loss is not None:
            result["loss"] = out.loss
        return result

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, Any],
        num_beams: int = 1,
        max_new_tokens: int = 100,
        repetition_penalty: float = 1.0,
        use_cache: bool = True,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate reports with Hugging Face ``generate`` from the prompt in ``batch`` (no report tokens).

        Args:
            batch: as for :meth:`forward` without labels; rows are whole prompts (equal length).
            num_beams: beam width (1 = greedy, deterministic).
            max_new_tokens: upper bound on generated tokens.
            repetition_penalty: CTRL-style penalty on already generated tokens (1.0 = none).
            use_cache: reuse attention keys/values between steps (KV cache).
            generate_kwargs: any other ``GenerationConfig`` field (``min_new_tokens``, ``length_penalty``, ...).

        Returns:
            ``(B, T)`` generated token ids (the prompt is not included), padded with the pad id after EOS.
        """
        llm = self.language_model
        config = llm.config
        eos = config.eos_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else eos
        with self._autocast(batch["input_ids"].device):
            embeds = self.input_embeddings(batch)
            return llm.generate(
                inputs_embeds=embeds,
                attention_mask=batch.get("attention_mask"),
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                repetition_penalty=repetition_penalty,
                use_cache=use_cache,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                **generate_kwargs,
            )


def _soft_prompts(vision_encoder: nn.Module, projector: VisualProjector, images: torch.Tensor) -> torch.Tensor:
    vision_trainable = any(p.requires_grad for p in vision_encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and vision_trainable):
        visual = vision_encoder(images)
    return projector(visual.to(projector.norm.weight.dtype))


class SoftPromptTower(nn.Module):
    """The image path of a (trained) report generator as one tensor-in, tensor-out module, channel first.

    Holds the very ``vision_encoder`` (with its LoRA, if trained with one) and ``projector`` of ``network``, so
    the weights of ``models/model.pt`` apply, for MONAI's ``verify_net_in_out`` and ``torch.jit.trace``: images
    ``(B, C, H, W)`` -> soft visual prompts ``(B, D_llm, N)``, the transpose of the ``(B, N, D_llm)`` tokens the LLM
    receives (MONAI's shape check reads the channel count at dimension 1). The LLM and the prompt placement are
    left out (token sequences and ``generate``).

    Args:
        network: a :class:`ReportGenerator` (DDP-unwrapped).
    """

    def __init__(self, network: ReportGenerator) -> None:
        super().__init__()
        if not isinstance(network, ReportGenerator):
            raise TypeError(f"SoftPromptTower needs a ReportGenerator; got {type(network).__name__}")
        self.vision_encoder = network.vision_encoder
        self.projector = network.projector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, C, H, W). Returns soft prompts (B, D_llm, N), N visual tokens."""
        return _soft_prompts(self.vision_encoder, self.projector, images).transpose(1, 2)
