"""Contrastive losses: CLIP InfoNCE (with cross-rank gathering) and the label-aware pairwise sigmoid loss."""

from common._lazy import lazy_submodules
from common.losses.clip_loss import ClipLoss, LogitScale, clip_logits, gather_features
from common.losses.pairwise_sigmoid import LabelAwarePairwiseSigmoidLoss, pair_targets

__all__ = ["ClipLoss", "LogitScale", "clip_logits", "gather_features", "LabelAwarePairwiseSigmoidLoss", "pair_targets"]

__getattr__ = lazy_submodules(__name__)
