"""The image tower of a two-tower model as one tensor-in, tensor-out module, for MONAI's shape check and export.

MONAI's ``verify_net_in_out`` and the model zoo's TorchScript check build a bundle's ``network_def``-like key and
call it on one random tensor ``(1, C, *spatial)``; our full networks take batch dicts (images and token ids), so
each bundle names the part that takes one tensor in its ``traceable_network_def`` key: this tower, a projection
head, or a projector. ``torch.jit.trace`` of it gives the eager outputs (tested to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageTower"]


class ImageTower(nn.Module):
    """``encoder`` then ``projection`` (and L2 normalisation): images ``(B, C, *spatial)`` -> embeddings ``(B, D)``.

    Args:
        encoder: the image encoder, ``(B, C, *spatial)`` -> ``(B, hidden)`` (e.g.
            :class:`~common.vision.dinov2_encoder.DINOv2Encoder`).
        projection: ``(B, hidden)`` -> ``(B, D)``; None keeps the encoder's features.
        normalize: L2-normalise the output, as the contrastive models compare embeddings.
    """

    def __init__(self, encoder: nn.Module, projection: nn.Module | None = None, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection if projection is not None else nn.Identity()
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, C, *spatial)``. Returns ``(B, D)``."""
        features = self.projection(self.encoder(images))
        return F.normalize(features, dim=-1) if self.normalize else features
