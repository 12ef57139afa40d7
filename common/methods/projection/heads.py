"""Small projection heads on frozen embeddings (Margaritis et al., arXiv 2502.02048).

The paper trains, per modality, a Linear-ReLU-Linear head on frozen foundation-model embeddings and uses
the projections as features downstream. The official code caps the hidden width at ``min(d_in // 2, 16)``;
here it is a parameter (``hidden_dim=16`` reproduces the paper, the bundle's default is wider). Dropout and
LayerNorm are options the paper does not use.

Every module here is TorchScript-scriptable: :class:`DualProjectionModel` takes ``Dict[str, Tensor]``, and
:class:`ImageProjection` (the bundle's ``traceable_network_def``) is its image side as one tensor in, one tensor out,
with the model's own state-dict keys, so MONAI's ``ckpt_export`` loads ``models/model.pt`` into it strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from common.losses.clip_loss import LogitScale
from common.weights.fingerprint import combine_fingerprints
from torch import nn

__all__ = ["DualProjectionModel", "ImageProjection", "ProjectionHead", "encoders_fingerprint"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ProjectionHead(nn.Module):
    """``Linear(d_in, h) -> activation -> [Dropout] -> Linear(h, d_out) [-> LayerNorm]``.

    Args:
        in_dim: width of the frozen embedding.
        hidden_dim: hidden width (the paper's code: 16).
        out_dim: projected width (the paper's code: 128).
        activation: ``"relu"`` (paper) or ``"gelu"``.
        dropout: dropout after the activation (paper: 0).
        layer_norm: LayerNorm on the output (paper: no).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 256,
        out_dim: int = 128,
        activation: str = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"projection widths must be positive, got in={in_dim}, hidden={hidden_dim}, out={out_dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.in_dim = in_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), _ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden_dim, out_dim))
        if layer_norm:
            layers.append(nn.LayerNorm(out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_dim:
            # the official code hard-codes input_dim=768 and fails with a bare shape error; name the mismatch
            raise ValueError(
                f"projection head expects embeddings of shape (B, {self.in_dim}), got {list(embeddings.shape)}"
            )
        return self.net(embeddings.float())


class DualProjectionModel(nn.Module):
    """One head per modality (the paper's best-performing variant) and a CLIP logit scale.

    ``forward`` takes the batch dict (``image_embedding`` (B, D_i), ``text_embedding`` (B, D_t)) and returns
    ``{"image_projection", "text_projection", "logit_scale"}``; a modality absent from the batch is skipped.
    Set ``learnable_logit_scale=False`` when the objective has no CLIP term.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_dim: int = 256,
        out_dim: int = 128,
        activation: str = "relu",
        dropout: float = 0.0,
        layer_norm: bool = False,
        temperature_init: float = 0.07,
        logit_scale_max: float = 100.0,
        learnable_logit_scale: bool = True,
    ) -> None:
        super().__init__()
        head = dict(
            hidden_dim=hidden_dim, out_dim=out_dim, activation=activation, dropout=dropout, layer_norm=layer_norm
        )
        self.image_head = ProjectionHead(image_dim, **head)
        self.text_head = ProjectionHead(text_dim, **head)
        # a buffer when the objective does not use it: DDP rejects parameters that never receive a gradient
        self.logit_scale = LogitScale(temperature_init, logit_scale_max, learnable=learnable_logit_scale)
        self.config = {  # every constructor argument: inference rebuilds the network from a checkpoint's record
            "image_dim": image_dim,
            "text_dim": text_dim,
            **head,
            "temperature_init": temperature_init,
            "logit_scale_max": logit_scale_max,
            "learnable_logit_scale": learnable_logit_scale,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"image_embedding": (B, D_i), "text_embedding": (B, D_t)}`` (either may be absent; other entries are
        ignored) -> ``{"logit_scale": (), "image_projection": (B, out_dim), "text_projection": (B, out_dim)}``."""
        out: dict[str, torch.Tensor] = {"logit_scale": self.logit_scale()}
        if "image_embedding" in batch:
            out["image_projection"] = self.image_head(batch["image_embedding"])
        if "text_embedding" in batch:
            out["text_projection"] = self.text_head(batch["text_embedding"])
        if len(out) == 1:
            raise ValueError(f"batch has neither 'image_embedding' nor 'text_embedding'; keys: {sorted(batch.keys())}")
        return out


class ImageProjection(nn.Module):
    """The image side of a :class:`DualProjectionModel`: ``(B, D_i)`` image embeddings -> ``(B, out_dim)``.

    What ``network_data_format`` describes and MONAI's ``verify_net_in_out`` and ``ckpt_export`` take (one tensor in,
    one out). It shares the model's modules and keeps its state-dict keys (``image_head.*``, ``text_head.*``,
    ``logit_scale.*``), so ``models/model.pt``, the model's state dict, loads into it strictly; the text head is
    carried, not run.

    Args:
        model: the (trained) dual model.
    """

    def __init__(self, model: DualProjectionModel) -> None:
        super().__init__()
        self.image_head = model.image_head
        self.text_head = model.text_head
        self.logit_scale = model.logit_scale

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """(B, D_i) -> (B, out_dim), as ``DualProjectionModel(...)["image_projection"]``."""
        return self.image_head(image_embedding)


def encoders_fingerprint(image_encoder: Any, text_encoder: Any) -> str:
    """The base-model fingerprint of projection heads: their two frozen encoders' identities (weights sha256,
    pooling, preprocessing), so heads are never applied to embeddings of other encoders or preprocessing."""
    return combine_fingerprints(image_encoder.identity(), text_encoder.identity())
