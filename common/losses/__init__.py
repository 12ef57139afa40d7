"""Contrastive losses: CLIP InfoNCE (with cross-rank gathering) and the label-aware pairwise sigmoid loss."""

from .clip_loss import ClipLoss, LogitScale, clip_logits, gather_features
from .pairwise_sigmoid import LabelAwarePairwiseSigmoidLoss, pair_targets

__all__ = ["ClipLoss", "LogitScale", "clip_logits", "gather_features", "LabelAwarePairwiseSigmoidLoss", "pair_targets"]


def __getattr__(name: str):
    """Import submodules on first attribute access, so configs can write ``common.losses.<module>.<name>``."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
