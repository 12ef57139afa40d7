"""Embedding-space quality scores used for validation and model selection."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from common.metrics.classification import safe_roc_auc
from common.metrics.retrieval import retrieval_recall_at_k

__all__ = ["pair_auroc", "mean_recall_at_1"]


def pair_auroc(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of cosine similarity as a same-label detector over all pairs ``i < j`` (the official code's log).

    Args:
        embeddings: (N, D); labels: (N,) class ids.
    """
    z = F.normalize(embeddings.float(), dim=-1)
    i, j = torch.triu_indices(len(z), len(z), offset=1)
    similarity = (z[i] * z[j]).sum(-1).cpu().numpy()
    same = (labels[i] == labels[j]).cpu().numpy().astype(int)
    return safe_roc_auc(same, similarity, "same-label pairs")


def mean_recall_at_1(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean of image→text and text→image recall@1 for paired features (pair i matches i)."""
    similarity = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).t()
    i2t = retrieval_recall_at_k(similarity, ks=(1,))["R@1"]
    t2i = retrieval_recall_at_k(similarity.t(), ks=(1,))["R@1"]
    return float(np.mean([i2t, t2i]))
