"""CT-CLIP: CTViT + BERT dual encoder for chest CT volumes and radiology reports, state-dict compatible.

Hamamci et al., "Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed
Tomography", arXiv 2403.17834 (official code: ibrahimethemhamamci/CT-CLIP, ``CT_CLIP/ct_clip/ct_clip.py``).

Image path: CTViT post-VQ tokens (B, t, h, w, d) -> mean over the slab axis t -> flatten (h, w, d) ->
``to_visual_latent`` (no bias) -> L2 norm. Text path: BERT ``last_hidden_state[:, 0]`` (CLS, not the pooler) ->
``to_text_latent`` (no bias) -> L2 norm. Logits = ``exp(temperature) * cosine`` with ``temperature`` a learned
log-scale (init 1.0, not clamped). The module names equal the official ones, so ``CT-CLIP_v2.pt`` loads strictly;
the unused ``*_extra`` projections (151M parameters) can be dropped after loading with :meth:`drop_unused_weights`.

House pattern: ``forward(batch)`` takes the batch dict and returns a dict of outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from common.losses.temperature import check_temperature
from common.vision.ctvit import FULL_CTVIT_CONFIG, CTViT
from torch import nn
from transformers import BertConfig, BertModel

logger = logging.getLogger(__name__)

__all__ = ["CTCLIP", "CTCLIPImageTower", "CXR_BERT_CONFIG", "pair_logits", "zero_shot_probabilities"]

#: microsoft/BiomedVLP-CXR-BERT-specialized as a plain ``BertModel`` (CT-CLIP discards the CXR-BERT head).
CXR_BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.25,
    "attention_probs_dropout_prob": 0.25,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


# CT-CLIP's initial temperature (exp(-1)); a module constant, not a call in the signature
TEMPERATURE_INIT = math.exp(-1.0)


class CTCLIP(nn.Module):
    """The CT-CLIP dual encoder.

    Args:
        visual_transformer: a :class:`~common.vision.ctvit.CTViT`.
        text_transformer: a ``transformers.BertModel``.
        dim_image: flattened pooled image feature size, ``h * w * dim`` (24*24*512 = 294,912 in CT-CLIP).
        dim_text: BERT hidden size (768).
        dim_latent: joint embedding size (512).
        temperature_init: initial temperature tau; the learned parameter ``temperature`` is CT-CLIP's
            ``log(1/tau)``, which CT-CLIP initialises at 1.0 (tau = 1/e, the default).
        keep_unused: create the ``to_*_latent_extra`` copies so the official checkpoint loads strictly.
    """

    def __init__(
        self,
        visual_transformer: CTViT,
        text_transformer: BertModel,
        dim_image: int,
        dim_text: int,
        dim_latent: int = 512,
        temperature_init: float = TEMPERATURE_INIT,
        keep_unused: bool = True,
    ) -> None:
        super().__init__()
        h, w = visual_transformer.patch_height_width
        if dim_image != h * w * visual_transformer.dim:
            raise ValueError(
                f"dim_image={dim_image} does not match CTViT's pooled feature size h*w*dim = {h}*{w}*"
                f"{visual_transformer.dim} = {h * w * visual_transformer.dim}"
            )
        if dim_text != text_transformer.config.hidden_size:
            raise ValueError(
                f"dim_text={dim_text} does not match the BERT hidden_size={text_transformer.config.hidden_size}"
            )
        self.text_transformer = text_transformer
        self.visual_transformer = visual_transformer
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)
        if keep_unused:  # deep copies in the official code: saved in the checkpoint, never used in forward
            self.to_text_latent_extra = nn.Linear(dim_text, dim_latent, bias=False)
            self.to_visual_latent_extra = nn.Linear(dim_image, dim_latent, bias=False)
        # named and stored as in CT-CLIP (a log scale), so the official checkpoint loads strictly
        tau = check_temperature(temperature_init, "temperature_init")
        self.temperature = nn.Parameter(torch.tensor(-math.log(tau)))

    @classmethod
    def from_config(
        cls,
        ctvit_config: Mapping[str, Any] | None = None,
        bert_config: Mapping[str, Any] | None = None,
        text_model_path: str = "",
        dim_latent: int = 512,
        pretrained_path: str = "",
        drop_unused: bool = True,
        device: str | torch.device | None = None,
        bert_attn_implementation: str = "sdpa",
        init_seed: int | None = None,
    ) -> CTCLIP:
        """Build CT-CLIP from configs, optionally loading the official checkpoint (or a local BERT folder).

        Args:
            ctvit_config: CTViT keyword arguments; default: the official full-size configuration.
            bert_config: ``BertConfig`` fields; default: CXR-BERT's. Ignored when ``text_model_path`` is given.
            text_model_path: local Hugging Face folder of the text encoder (e.g. CXR-BERT); empty: build from config.
            dim_latent: joint embedding size.
            pretrained_path: local ``CT-CLIP_v2.pt`` (or a safetensors state dict); loaded strictly.
            drop_unused: after loading, delete the weights CT-CLIP never uses in forward (saves ~600 MB).
            device: where to materialise the model. With ``pretrained_path`` the model is built on the meta
                device and the checkpoint tensors are assigned, so no random initialisation is computed.
            bert_attn_implementation: ``"sdpa"`` or ``"eager"`` (identical to ~1e-6).
            init_seed: seed of the random weights of a model built without ``pretrained_path`` (the global RNG is
                left untouched), so training, evaluation and inference build the same base for the adapters;
                None draws from the global RNG.
        """
        from common.weights.ctclip_checkpoint import load_ctclip_checkpoint
        from common.weights.hf_loading import check_local_model_dir, load_or_build_model

        ctvit_kwargs = dict(ctvit_config or FULL_CTVIT_CONFIG)
        build_device = torch.device("meta") if pretrained_path else None
        seeded = init_seed is not None and not pretrained_path
        with contextlib.ExitStack() as stack:
            if build_device is not None:
                stack.enter_context(torch.device(build_device))
            if seeded:
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.manual_seed(int(init_seed))
            visual = CTViT(**ctvit_kwargs)
            if text_model_path and not pretrained_path:
                text = load_or_build_model(
                    text_model_path, key="text_model_path", attn_implementation=bert_attn_implementation
                )
            else:  # with a CT-CLIP checkpoint the BERT weights come from it; a folder only gives the config
                if text_model_path:
                    config = BertConfig.from_pretrained(str(check_local_model_dir(text_model_path, "text_model_path")))
                else:
                    config = BertConfig(**(dict(bert_config) if bert_config else CXR_BERT_CONFIG))
                config._attn_implementation = bert_attn_implementation
                text = BertModel(config)
            h, w = visual.patch_height_width
            model = cls(
                visual, text, dim_image=h * w * visual.dim, dim_text=text.config.hidden_size, dim_latent=dim_latent
            )
        if pretrained_path:
            load_ctclip_checkpoint(model, pretrained_path, assign=True)
        if drop_unused:
            model.drop_unused_weights()
        if device is not None:
            model = model.to(device)
        return model

    def drop_unused_weights(self) -> None:
        """Delete the modules CT-CLIP saves but never uses in forward (``*_extra`` projections, decoder heads)."""
        for name in ("to_text_latent_extra", "to_visual_latent_extra"):
            if hasattr(self, name):
                delattr(self, name)
        for name in ("to_pixels", "to_pixels_first_frame", "to_patch_emb_first_frame"):
            if hasattr(self.visual_transformer, name):
                delattr(self.visual_transformer, name)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in the backward pass of both encoders."""
        self.visual_transformer.set_gradient_checkpointing(enabled)
        if enabled:
            self.text_transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.text_transformer.gradient_checkpointing_disable()

    def logit_scale(self) -> torch.Tensor:
        """``exp(temperature)``, the scalar multiplying cosine similarities."""
        return self.temperature.exp()

    def pooled_image_features(self, volume: torch.Tensor) -> torch.Tensor:
        """Args: volume (B, 1, D, H, W). Returns the flattened slab-mean of the post-VQ tokens (B, h*w*dim)."""
        return _pooled_image_features(self.visual_transformer, volume)

    def encode_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """Args: volume (B, 1, D, H, W). Returns L2-normalised image latents (B, dim_latent)."""
        return _image_latents(self.visual_transformer, self.to_visual_latent, volume)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: input_ids, attention_mask (B, L). Returns L2-normalised text latents (B, dim_latent)."""
        hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.to_text_latent(hidden[:, 0]), dim=-1)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Encode whatever the batch holds.

        Args:
            batch: ``image`` (B, 1, D, H, W); ``input_ids``/``attention_mask`` (B, L) for reports;
                ``prompt_input_ids``/``prompt_attention_mask`` (P, L) for label prompts (P = 2 * num pathologies,
                ordered present, not-present per pathology).

        Returns:
            ``image_latents`` (B, E), ``text_latents`` (B, E), ``prompt_latents`` (P, E) for what was given, and
            ``logit_scale`` (scalar).
        """
        out: dict[str, torch.Tensor] = {"logit_scale": self.logit_scale()}
        if "image" in batch:
            out["image_latents"] = self.encode_volume(batch["image"])
        if "input_ids" in batch:
            out["text_latents"] = self.encode_text(batch["input_ids"], batch.get("attention_mask"))
        if "prompt_input_ids" in batch:
            out["prompt_latents"] = self.encode_text(batch["prompt_input_ids"], batch.get("prompt_attention_mask"))
        if len(out) == 1:
            raise ValueError(
                f"CTCLIP batch holds none of 'image', 'input_ids', 'prompt_input_ids'; keys: {sorted(batch)}"
            )
        return out


def _pooled_image_features(visual_transformer: CTViT, volume: torch.Tensor) -> torch.Tensor:
    tokens = visual_transformer(volume)
    return tokens.mean(dim=1).reshape(tokens.shape[0], -1)


def _image_latents(visual_transformer: CTViT, to_visual_latent: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    return F.normalize(to_visual_latent(_pooled_image_features(visual_transformer, volume)), dim=-1)


class CTCLIPImageTower(nn.Module):
    """The image path of a (trained) CT-CLIP as one tensor-in, tensor-out module: volumes -> image latents.

    Holds the very ``visual_transformer`` and ``to_visual_latent`` modules of ``network`` (its LoRA layers and
    loaded weights included, not copies), for MONAI's ``verify_net_in_out`` and ``torch.jit.trace``. Traced in
    ``eval()`` without gradients it is a pure tensor function: patch embedding, the spatial and temporal
    transformers (with their adapters), the frozen VQ's nearest-code lookup (cosine similarity, top-1 code row),
    the slab mean, ``to_visual_latent`` and L2 normalisation. Left out, as Python branches fixed at trace time: the
    codebook's EMA update (off in every bundle run), the straight-through estimator of training and the input
    shape check of :meth:`CTViT.check_volume` (a traced module does not check its input).

    Args:
        network: a :class:`CTCLIP`, or the PEFT model wrapping one (``apply_ctclip_lora``), DDP-unwrapped.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        clip = network.get_base_model() if hasattr(network, "get_base_model") else network
        if not isinstance(clip, CTCLIP):
            raise TypeError(f"CTCLIPImageTower needs a CTCLIP (or its PEFT model); got {type(clip).__name__}")
        self.visual_transformer = clip.visual_transformer
        self.to_visual_latent = clip.to_visual_latent

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Args: volume (B, 1, D, H, W), D a multiple of the temporal patch size. Returns latents (B, dim_latent)."""
        return _image_latents(self.visual_transformer, self.to_visual_latent, volume)


def pair_logits(image_latents: torch.Tensor, prompt_latents: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Prompt-pair logits. Args: image_latents (N, E); prompt_latents (2K, E) as [present_0, absent_0, ...].

    Returns: (N, K, 2) logits ``logit_scale * cosine`` for ("X is present.", "X is not present.").
    """
    if prompt_latents.shape[0] % 2:
        raise ValueError(
            f"prompt latents must come in (present, not present) pairs; got {prompt_latents.shape[0]} rows"
        )
    logits = logit_scale * image_latents @ prompt_latents.t()  # (N, 2K)
    return logits.reshape(image_latents.shape[0], -1, 2)


def zero_shot_probabilities(
    image_latents: torch.Tensor, prompt_latents: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CT-CLIP's zero-shot score: softmax over each (present, not present) pair; returns P(present) (N, K)."""
    return pair_logits(image_latents, prompt_latents, logit_scale).softmax(dim=-1)[..., 0]
