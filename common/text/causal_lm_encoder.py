"""Causal-LM sentence encoder: the hidden state at an EOS token appended after the text (CLEFT's text tower).

Du et al., "CLEFT: Language-Image Contrastive Learning with Efficient Large Language Model and Prompt
Fine-Tuning", MICCAI 2024 (arXiv 2407.21011). The official code pads with EOS to a fixed length and reads the
first trailing pad; a caption that fills the maximum length has no pad and the official code then reads token 0.
Here an EOS is always appended *after* truncation, so every caption reads its own EOS, and padding is to the
longest caption of the batch (right side), so the EOS sits at ``attention_mask.sum(-1) - 1``; it is attended
(mask 1), so it also attends to itself.

``official_unpadded_eos_quirk=True`` reproduces the official numbers instead (checked against the reference vectors
of the official code in ``tests/cleft/test_cleft_parity.py``): captions are truncated to ``max_length`` and padded
to it with EOS (= pad, attention mask 0, so the pooled EOS does not attend to itself), the pooled position is the
first of the trailing EOS ids, and a caption that fills ``max_length`` without padding pools **token 0** (the
official ``find_last_word_token`` reads ``embeddings[i, -0]``); with a learned context that is context token 0.

GPT-2 (BioMedLM) and Llama (Meditron) architectures both work through ``transformers.AutoModel``; LoRA comes from
PEFT with PEFT's default targets for the architecture unless the config names them (``c_attn`` for GPT-2,
``q_proj``/``v_proj`` for Llama, as the official code gets by passing no ``target_modules``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.peft.lora import apply_lora
from common.weights.hf_loading import enable_activation_checkpointing, load_or_build_model, load_tokenizer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import AutoModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

__all__ = ["CausalLMEncoder", "default_lora_targets", "train_bpe_tokenizer"]


def default_lora_targets(model_type: str) -> list[str]:
    """PEFT's default LoRA targets for a ``transformers`` ``model_type`` (what the official code gets)."""
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise ValueError(
            f"PEFT has no default LoRA targets for model_type={model_type!r}; set lora_target_modules explicitly"
        )
    return list(targets)


@idist.one_rank_first()  # under DDP rank 0 trains and saves it; the others then load that folder, never half-written
def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, save_dir: str | Path | None = None, eos_token: str = "<|endoftext|>"
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``, for the tiny demo LM; no download needed.

    When ``save_dir`` already holds a tokenizer it is loaded instead, so training and evaluation share one
    vocabulary; otherwise the trained tokenizer is saved there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if save_dir is not None and (Path(save_dir) / "tokenizer.json").is_file():
        return load_tokenizer(save_dir, key="tokenizer_dir")
    texts = [str(t) for t in texts if str(t).strip()]
    if not texts:
        raise ValueError("train_bpe_tokenizer needs at least one non-empty text")
    bpe = Tokenizer(models.BPE())  # GPT-2's byte-level BPE, as tokenizers' ByteLevelBPETokenizer sets it up
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos_token, pad_token=eos_token)
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


class CausalLMEncoder(nn.Module):
    """Text ``list[str]`` -> token ids -> EOS hidden state ``(B, hidden_size)`` of a causal LM.

    Args:
        model: a ``transformers`` base causal LM (``GPT2Model``, ``LlamaModel``), optionally wrapped by PEFT.
        tokenizer: its tokenizer; needs an ``eos_token``.
        max_length: maximum tokens per caption *including* the appended EOS (and BOS where used).
        add_bos: prepend the BOS token; ``None`` = when the tokenizer has a BOS distinct from EOS (Llama yes, GPT-2 no).
        official_unpadded_eos_quirk: tokenize and pool exactly as the official code (pad = EOS with mask 0, read the
            first trailing pad, token 0 when a caption has no pad), e.g. to reproduce the released checkpoints'
            numbers; off: always append an attended EOS after truncation and read it.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 64,
        add_bos: bool | None = None,
        official_unpadded_eos_quirk: bool = False,
    ) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token: EOS pooling needs one")
        if add_bos is None:
            add_bos = tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.eos_token_id
        if max_length < 2 + int(add_bos):
            raise ValueError(f"text_max_length must be at least {2 + int(add_bos)} (text + EOS), got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.add_bos = bool(add_bos)
        self.official_unpadded_eos_quirk = bool(official_unpadded_eos_quirk)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.num_truncated = 0  # captions cut to max_length so far (each counted once, at tokenization)

    @classmethod
    def from_config(
        cls,
        model_path: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        tokenizer_path: str | Path | None = None,
        max_length: int = 64,
        use_lora: bool = True,
        lora_rank: int = 8,
        lora_alpha: float = 32,
        lora_dropout: float = 0.1,
        lora_target_modules: Sequence[str] | str | None = None,
        gradient_checkpointing: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        key: str = "text_model_path",
        official_unpadded_eos_quirk: bool = False,
    ) -> CausalLMEncoder:
        """Load the LM from a local folder (or build it from ``config``), add LoRA, enable checkpointing.

        Args:
            model_path: local Hugging Face folder (e.g. BioMedLM, Meditron); empty builds from ``config``.
            config: architecture dict (``{"model_type": "gpt2", "n_embd": 32, ...}``) when no path is given.
            tokenizer: a ready tokenizer; else loaded from ``tokenizer_path`` or, failing that, ``model_path``.
            max_length: tokens per caption including EOS (64 for CheXpert, 72 for EMBED in the paper's code).
            use_lora: wrap with LoRA (stage 1); ``False`` leaves the LM fully frozen.
            lora_rank, lora_alpha, lora_dropout: LoRA hyper-parameters (CLEFT: 8, 32, 0.1).
            lora_target_modules: module names; ``None`` uses PEFT's default for the architecture.
            gradient_checkpointing: recompute LM activations in backward (non-reentrant, so frozen embeddings
                with LoRA adapters still get gradients; transformers issue 28536).
            model_kwargs: passed to ``from_pretrained`` (``dtype``, ``attn_implementation``).
            official_unpadded_eos_quirk: see :class:`CausalLMEncoder`.
        """
        model = load_or_build_model(model_path, config, auto_class=AutoModel, key=key, **dict(model_kwargs or {}))
        if tokenizer is None:
            source = tokenizer_path or model_path
            if not source:
                raise ValueError(f"{key} is empty and no tokenizer was given: set tokenizer_path or pass a tokenizer")
            tokenizer = load_tokenizer(source, key="tokenizer_path" if tokenizer_path else key)
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        for param in model.parameters():
            param.requires_grad_(False)
        if use_lora:
            targets = lora_target_modules or default_lora_targets(model.config.model_type)
            model = apply_lora(model, targets, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
        return cls(model, tokenizer, max_length=max_length, official_unpadded_eos_quirk=official_unpadded_eos_quirk)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def input_embeddings(self) -> nn.Embedding:
        """The LM's token embedding table (used to initialise and place prompt contexts)."""
        return self.model.get_input_embeddings()

    def token_ids(self, texts: Sequence[str], field: str = "caption") -> list[list[int]]:
        """Token ids of each text, truncated to leave room for BOS/EOS, with EOS appended (and BOS prepended)."""
        if isinstance(texts, str):
            texts = [texts]
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{field} {i} of the batch is empty or not text: {text!r}")
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        eos = [] if self.official_unpadded_eos_quirk else [self.tokenizer.eos_token_id]
        budget = self.max_length - len(eos) - int(self.add_bos)
        out = []
        for i, seq in enumerate(ids):
            if len(seq) > budget:
                if self.num_truncated == 0:
                    logger.warning(
                        "%s %d has %d tokens, more than text_max_length=%d allows: truncated (%s); later "
                        "truncations are counted in num_truncated",
                        field,
                        i,
                        len(seq) + len(eos),
                        self.max_length,
                        (
                            "no pad left: token 0 is read, official_unpadded_eos_quirk"
                            if self.official_unpadded_eos_quirk
                            else "EOS still appended and read"
                        ),
                    )
                self.num_truncated += 1
                seq = seq[:budget]
            prefix = [self.tokenizer.bos_token_id] if self.add_bos else []
            out.append(prefix + list(seq) + eos)
        return out

    def tokenize(self, texts: Sequence[str], field: str = "caption") -> dict[str, torch.Tensor]:
        """Texts -> ``input_ids``, ``attention_mask`` ``(B, L)``, right-padded to the longest in the batch (to
        ``max_length`` with the official quirk, whose pooling depends on the padding)."""
        ids = self.token_ids(texts, field=field)
        length = self.max_length if self.official_unpadded_eos_quirk else max(len(s) for s in ids)
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state at each caption's EOS.

        Args:
            input_ids: ``(B, L)`` right-padded, EOS last among the attended tokens (as :meth:`tokenize` makes them).
            attention_mask: ``(B, L)``.
            prefix_embeds: optional ``(P, H)`` or ``(B, P, H)`` learned context placed before the tokens (CoOp).

        Returns:
            ``(B, hidden_size)``.
        """
        if input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ"
            )
        embeds = self.input_embeddings()(input_ids)
        mask = attention_mask
        if prefix_embeds is not None:
            if prefix_embeds.ndim == 2:
                prefix_embeds = prefix_embeds.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
            embeds = torch.cat([prefix_embeds.to(embeds.dtype), embeds], dim=1)
            prefix_mask = torch.ones(prefix_embeds.shape[:2], dtype=mask.dtype, device=mask.device)
            mask = torch.cat([prefix_mask, mask], dim=1)
        hidden = self.model(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False
        ).last_hidden_state  # (B, P + L, H)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.pooled_index(input_ids, mask)]

    def pooled_index(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Position ``(B,)`` read in the ``(B, T)`` sequence (context first, if any) that the LM sees.

        Default: the last attended token (the appended EOS). With ``official_unpadded_eos_quirk``: ``T - k`` for
        ``k`` trailing EOS ids, and 0 when ``k == 0`` (official ``find_last_word_token``).
        """
        if not self.official_unpadded_eos_quirk:
            return mask.sum(dim=1) - 1  # right padding: the last attended token is the appended EOS
        trailing = (input_ids == self.tokenizer.eos_token_id).flip(1).long().cumprod(dim=1).sum(dim=1)
        return torch.where(trailing > 0, mask.shape[1] - trailing, torch.zeros_like(trailing))
