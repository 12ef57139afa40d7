"""A frozen Hugging Face text encoder that turns reports into fixed vectors (CLS, mean or last-token pooling).

Used by ``frozen_projection`` to embed reports once into the cache. Any ``transformers`` encoder or decoder
works: BERT-style models with ``cls`` or ``mean`` pooling, decoder LLMs with ``last`` (last non-padding token).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from common.data.report_cleaning import CLEANING_VERSION, clean_report
from common.weights.fingerprint import FrozenModelIdentity
from common.weights.hf_loading import load_or_build_model, load_tokenizer
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FrozenTextEncoder", "pool_hidden_states", "POOLINGS"]

POOLINGS = ("cls", "mean", "last")


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool (B, L, D) token states to (B, D).

    ``cls``: the first token (BERT's [CLS]); ``mean``: the mean over non-padding tokens; ``last``: the last
    non-padding token (decoder LLMs; works for left and right padding).
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * attention_mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")


class FrozenTextEncoder(FrozenModelIdentity, nn.Module):
    """Frozen text encoder with its tokenizer and report cleaning.

    Args:
        model_path: local Hugging Face folder; empty builds ``model_config`` with random weights.
        model_config: architecture config used when ``model_path`` is empty (tests, demos).
        tokenizer_path: tokenizer folder; defaults to ``model_path``.
        pooling: ``cls``, ``mean`` or ``last``.
        max_length: tokens kept per report (``text_max_length``); longer ones are truncated and counted in
            ``num_truncated`` (the first is logged with its length; extraction logs the total).
        report_sections: keep only these report sections (e.g. ``["findings", "impression"]``); None keeps all.
        lowercase: lower-case reports before tokenising.
    """

    def __init__(
        self,
        model_path: str = "",
        model_config: Mapping[str, Any] | None = None,
        tokenizer_path: str = "",
        pooling: str = "mean",
        max_length: int = 128,
        report_sections: Sequence[str] | None = None,
        lowercase: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        if not (tokenizer_path or model_path):
            raise ValueError("a text encoder needs a tokenizer: set tokenizer_path (or text_model_path)")
        self.model = load_or_build_model(model_path, model_config, key="text_model_path").eval().requires_grad_(False)
        self.tokenizer = load_tokenizer(tokenizer_path or model_path, key="tokenizer_path")
        if self.tokenizer.pad_token is None:  # decoder LLMs ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        vocab = getattr(self.model.config, "vocab_size", None)
        if vocab is not None and len(self.tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the text model's vocab_size is {vocab}")
        self.pooling, self.max_length = pooling, int(max_length)
        self.report_sections = list(report_sections) if report_sections else None
        self.lowercase = lowercase
        self.name_or_path = model_path or f"config:{self.model.config.model_type}"
        self.from_folder = bool(model_path)
        self.num_truncated = 0  # reports cut to max_length so far

    def identity(self) -> dict[str, Any]:
        """Everything that changes the embedding of a given report: part of the cache key."""
        return {
            "kind": "text",
            # the architecture, not the folder's location: the weights' sha256 names them, so the same weights in
            # another environment or folder give the same identity (and a checkpoint trained on them still loads)
            "model": f"{'folder' if self.from_folder else 'config'}:{self.model.config.model_type}",
            "weights_sha256": self.weights_sha256,
            "tokenizer": type(self.tokenizer).__name__,
            "vocab_size": len(self.tokenizer),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "report_sections": self.report_sections,
            "lowercase": self.lowercase,
            "cleaning_version": CLEANING_VERSION,
        }

    def prepare(self, report: str) -> str:
        """The cleaned report that is embedded; an empty result is an error for the caller to name."""
        return clean_report(report, sections=self.report_sections, lowercase=self.lowercase)

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed cleaned texts; returns (B, D) float32."""
        device = next(self.model.parameters()).device
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]
        longer = [n for n in lengths if n > self.max_length]
        if longer and self.num_truncated == 0:
            logger.warning(
                "a report has %d tokens, more than text_max_length=%d: truncated (the count of truncated reports is "
                "logged after extraction)",
                longer[0],
                self.max_length,
            )
        self.num_truncated += len(longer)
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**tokens).last_hidden_state
        return pool_hidden_states(hidden, tokens["attention_mask"], self.pooling).float()
