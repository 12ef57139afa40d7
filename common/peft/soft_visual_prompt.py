"""Soft visual prompts: project visual tokens into a causal LM's embedding space and place them in a prompt.

Lu et al., "Effectively Fine-tune to Improve Large Multimodal Models for Radiology Report Generation", NeurIPS 2023
DGM4H workshop (arXiv 2312.01504): visual features, mapped into the LLM's text-embedding space, are fed to a frozen
decoder-only LLM as soft prompts. The projector follows R2GenGPT (Linear + LayerNorm) with LLaVA-1.5's 2-layer MLP
as the alternative.

The template is plain text with one ``<image>`` marker, e.g. ``"Human: <Img><image></Img> Write the findings.
\\nAssistant:"``; the marker becomes ``num_visual_tokens`` placeholder positions in ``input_ids`` and a boolean
``image_token_mask``; :func:`place_soft_prompts` writes the projected visual tokens into exactly those positions of
the LLM's input embeddings (the ``masked_scatter`` that Hugging Face LLaVA uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["IMAGE_MARKER", "PromptTemplate", "VisualProjector", "place_soft_prompts"]

IMAGE_MARKER = "<image>"


class VisualProjector(nn.Module):
    """Map visual tokens ``(B, N, D_v)`` to soft prompt tokens ``(B, N, D_llm)``.

    Args:
        in_dim: width of a visual token ``D_v``.
        out_dim: the LLM's embedding width ``D_llm`` (4096 for OpenLLaMA-7B, 768 for GPT-2 small).
        kind: ``"linear"`` (Linear -> LayerNorm, R2GenGPT) or ``"mlp"`` (Linear -> GELU -> Linear -> LayerNorm).
        hidden_dim: width of the MLP's hidden layer (default ``out_dim``).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden_dim: int | None = None) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"projector_type must be 'linear' or 'mlp', got {kind!r}")
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"projector dimensions must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        self.kind = kind
        if kind == "linear":
            self.proj = nn.Linear(in_dim, out_dim)
        else:
            hidden = int(hidden_dim or out_dim)
            self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, D_v)`` -> ``(B, N, D_llm)``."""
        return self.norm(self.proj(visual_tokens))


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one ``<image>`` marker, tokenised once into the ids before and after the visual tokens.

    Args:
        prefix_ids: token ids before the visual tokens (BOS included where the LLM uses one).
        suffix_ids: token ids after the visual tokens, up to where the report starts.
        num_visual_tokens: how many soft prompt tokens replace the marker.
        placeholder_id: id written at the visual positions (its embedding is overwritten, never learned).
    """

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    num_visual_tokens: int
    placeholder_id: int

    @classmethod
    def from_text(cls, template: str, tokenizer, num_visual_tokens: int, add_bos: bool = True) -> PromptTemplate:
        """Tokenise ``template`` around its ``<image>`` marker with ``tokenizer`` (a Hugging Face tokenizer)."""
        if template.count(IMAGE_MARKER) != 1:
            raise ValueError(
                f"prompt_template must contain the marker {IMAGE_MARKER!r} exactly once, "
                f"found {template.count(IMAGE_MARKER)} in {template!r}"
            )
        if num_visual_tokens <= 0:
            raise ValueError(f"num_visual_tokens must be positive, got {num_visual_tokens}")
        before, after = template.split(IMAGE_MARKER)
        prefix = tokenizer(before, add_special_tokens=False)["input_ids"] if before.strip() else []
        suffix = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
        if add_bos and tokenizer.bos_token_id is not None:
            prefix = [tokenizer.bos_token_id, *prefix]
        placeholder = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if placeholder is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to use as the visual placeholder id")
        return cls(tuple(prefix), tuple(suffix), int(num_visual_tokens), int(placeholder))

    @property
    def length(self) -> int:
        """Number of prompt positions, visual tokens included."""
        return len(self.prefix_ids) + self.num_visual_tokens + len(self.suffix_ids)

    def prompt_ids(self) -> tuple[list[int], list[bool]]:
        """The prompt's ids and, aligned with them, ``True`` where a soft visual token goes."""
        ids = [*self.prefix_ids, *([self.placeholder_id] * self.num_visual_tokens), *self.suffix_ids]
        mask = [False] * len(self.prefix_ids) + [True] * self.num_visual_tokens + [False] * len(self.suffix_ids)
        return ids, mask


def place_soft_prompts(
    text_embeds: torch.Tensor, soft_prompts: torch.Tensor, image_token_mask: torch.Tensor
) -> torch.Tensor:
    """Write soft prompts into the marked positions of the text embeddings.

    Args:
        text_embeds: ``(B, L, D)`` the LLM's input embeddings of ``input_ids``.
        soft_prompts: ``(B, N, D)`` projected visual tokens.
        image_token_mask: ``(B, L)`` bool, exactly ``N`` ``True`` per row, in order of the visual tokens.

    Returns:
        ``(B, L, D)`` embeddings with row ``b``'s ``k``-th marked position holding ``soft_prompts[b, k]``.
    """
    batch, num_tokens, dim = soft_prompts.shape
    if text_embeds.shape[0] != batch or text_embeds.shape[-1] != dim:
        raise ValueError(
            f"soft prompts {tuple(soft_prompts.shape)} do not fit text embeddings {tuple(text_embeds.shape)}"
        )
    counts = image_token_mask.sum(dim=1)
    if not torch.all(counts == num_tokens):
        raise ValueError(f"each row needs {num_tokens} image positions in image_token_mask, got {counts.tolist()}")
    mask = image_token_mask.unsqueeze(-1).expand_as(text_embeds)
    return text_embeds.masked_scatter(mask, soft_prompts.to(text_embeds.dtype))


def nearest_vocabulary_tokens(
    soft_prompts: torch.Tensor, embedding_matrix: torch.Tensor, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary tokens whose input embeddings are closest (cosine) to each soft prompt token.

    The interpretability probe of soft prompts (Lester et al., EMNLP 2021; analysed for report generation by Lu et al.):
    soft prompts usually sit far from every word embedding, which the similarities show.

    Args:
        soft_prompts: ``(N, D)`` or ``(B, N, D)`` projected visual tokens.
        embedding_matrix: ``(V, D)`` the LLM's input embedding weights.
        k: how many nearest tokens per soft prompt.

    Returns:
        ``(token_ids, cosine_similarities)``, each shaped like ``soft_prompts`` without ``D``, plus a trailing ``k``.
    """
    if soft_prompts.shape[-1] != embedding_matrix.shape[-1]:
        raise ValueError(
            f"soft prompts have width {soft_prompts.shape[-1]} but the embedding matrix {embedding_matrix.shape[-1]}"
        )
    prompts = torch.nn.functional.normalize(soft_prompts.float(), dim=-1)
    vocab = torch.nn.functional.normalize(embedding_matrix.float(), dim=-1)
    similarity = prompts @ vocab.T
    values, indices = similarity.topk(k, dim=-1)
    return indices, values
