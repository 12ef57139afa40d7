"""Cross-modal retrieval recall@K (image→text, text→image) computed with scikit-learn's top-k accuracy."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import top_k_accuracy_score

__all__ = ["retrieval_recall_at_k", "bidirectional_retrieval"]


def retrieval_recall_at_k(
    similarity, ks: Sequence[int] = (1, 5, 10), targets=None, prefix: str = "R@"
) -> dict[str, float]:
    """Recall@K of queries against candidates: the share of queries whose match ranks in the top K.

    Args:
        similarity: (Nq, Nc) scores, higher is more similar.
        ks: the K values; a K at or above Nc is trivially 1.0 and is still reported.
        targets: (Nq,) index of each query's matching candidate; default ``arange(Nq)`` (pair i matches i).
        prefix: key prefix of the returned dict.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ...}`` (ranks are 1-based).
    """
    sim = (
        similarity.detach().float().cpu().numpy()
        if isinstance(similarity, torch.Tensor)
        else np.asarray(similarity, dtype=np.float64)
    )
    if sim.ndim != 2:
        raise ValueError(f"similarity must be (num_queries, num_candidates), got shape {sim.shape}")
    num_queries, num_candidates = sim.shape
    targets = np.arange(num_queries) if targets is None else np.asarray(targets)
    if targets.shape != (num_queries,) or targets.min() < 0 or targets.max() >= num_candidates:
        raise ValueError(f"targets must be {num_queries} candidate indices in [0, {num_candidates})")
    labels = np.arange(num_candidates)
    results = {}
    for k in ks:
        if k >= num_candidates:
            results[f"{prefix}{k}"] = 1.0
        else:
            results[f"{prefix}{k}"] = float(top_k_accuracy_score(targets, sim, k=k, labels=labels))
    # rank of the true candidate = 1 + number of candidates scored strictly higher
    true_scores = sim[np.arange(num_queries), targets]
    ranks = 1 + (sim > true_scores[:, None]).sum(axis=1)
    results["median_rank"] = float(np.median(ranks))
    return results


def bidirectional_retrieval(
    image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image→text and text→image recall@K for paired, L2-normalised features (pair i matches i)."""
    similarity = image_features.float() @ text_features.float().t()
    i2t = {f"image_to_text_{k}": v for k, v in retrieval_recall_at_k(similarity, ks).items()}
    t2i = {f"text_to_image_{k}": v for k, v in retrieval_recall_at_k(similarity.t(), ks).items()}
    return {**i2t, **t2i}
