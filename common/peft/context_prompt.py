"""A learnable context prompt shared across classes (CoOp's unified context), as CLEFT's stage 2 uses it.

Zhou et al., "Learning to Prompt for Vision-Language Models" (CoOp), IJCV 2022; Du et al., CLEFT, MICCAI 2024
(arXiv 2407.21011). ``num_tokens`` vectors in the LM's input-embedding space are placed before the class-name
tokens. CLEFT initialises them from the token embeddings of its caption template ("this is a chest x ray of a
patient with "), tiled or truncated to fill ``num_tokens`` (what PEFT's ``PromptTuningInit.TEXT`` does).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

__all__ = ["ContextPrompt"]


class ContextPrompt(nn.Module):
    """``num_tokens`` learnable context vectors ``(P, H)``.

    Args:
        num_tokens: context length ``P`` (CLEFT: 30).
        embed_dim: the LM's input-embedding width ``H``.
        init: ``(P, H)`` initial vectors; ``None`` draws them from N(0, 0.02^2) as CoOp's random init.
    """

    def __init__(self, num_tokens: int, embed_dim: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        if num_tokens <= 0:
            raise ValueError(f"num_context_tokens must be a positive integer, got {num_tokens}")
        if init is None:
            init = torch.randn(num_tokens, embed_dim) * 0.02
        if tuple(init.shape) != (num_tokens, embed_dim):
            raise ValueError(f"context init has shape {tuple(init.shape)}, expected ({num_tokens}, {embed_dim})")
        self.context = nn.Parameter(init.detach().clone().float())

    @classmethod
    def from_text(
        cls, init_text: str, num_tokens: int, tokenizer: PreTrainedTokenizerBase, embeddings: nn.Embedding
    ) -> ContextPrompt:
        """Initialise from the token embeddings of ``init_text``, tiled/truncated to ``num_tokens``.

        An empty ``init_text`` gives the random init.
        """
        if not init_text or not init_text.strip():
            return cls(num_tokens, embeddings.embedding_dim)
        ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"context_init_text {init_text!r} tokenizes to nothing")
        ids = (ids * math.ceil(num_tokens / len(ids)))[:num_tokens]
        with torch.no_grad():
            init = embeddings.weight[torch.tensor(ids, device=embeddings.weight.device)].float().cpu()
        return cls(num_tokens, embeddings.embedding_dim, init=init)

    @property
    def num_tokens(self) -> int:
        return int(self.context.shape[0])

    def forward(self) -> torch.Tensor:
        """Returns the context ``(P, H)``."""
        return self.context
