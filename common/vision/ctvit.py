"""CTViT: the 3D chest-CT encoder of CT-CLIP, state-dict compatible with the official checkpoint.

Hamamci et al., "Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed
Tomography" (CT-CLIP, arXiv 2403.17834); the encoder is the C-ViViT-style CTViT of GenerateCT (arXiv 2305.16037).

Input ``(B, 1, D, H, W)``: D = axial slices (the official "frames" axis), H = W = ``image_size``. Tubelets of
``temporal_patch_size x patch_size x patch_size`` voxels give a token grid ``(t, h, w)``; a spatial transformer
attends within each slab, a temporal transformer along each column, and a cosine-similarity vector quantiser
(vector-quantize-pytorch 1.1.2 semantics) replaces every token by its nearest codebook row. CT-CLIP uses those
*post-VQ* tokens as image features.

The quantiser here is frozen by default: its codebook never changes (no EMA update, whatever the train/eval
mode), and gradients pass straight through it (``x + (q - x).detach()``) whenever autograd is recording, so LoRA
adapters inside the encoder receive gradients. ``ema_update=True`` reproduces the official training-mode EMA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common.vision.ctvit_attention import ContinuousPositionBias, FactorizedTransformer
from torch import nn

__all__ = ["FULL_CTVIT_CONFIG", "CTViT", "CosineSimCodebook", "Patchify", "Unpatchify", "VectorQuantizer"]

#: The configuration every official CT-CLIP script builds (``scripts/run_zero_shot.py``).
FULL_CTVIT_CONFIG: dict[str, int] = {
    "dim": 512,
    "codebook_size": 8192,
    "image_size": 480,
    "patch_size": 20,
    "temporal_patch_size": 10,
    "spatial_depth": 4,
    "temporal_depth": 4,
    "dim_head": 32,
    "heads": 8,
}


class Patchify(nn.Module):
    """``(b, c, t*pt, h*p, w*p) -> (b, t, h, w, c*pt*p*p)``, patch vector ordered c, depth, row, column."""

    def __init__(self, patch_size: int, temporal_patch_size: int) -> None:
        super().__init__()
        self.p, self.pt = patch_size, temporal_patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, hh, ww = x.shape
        p, pt = self.p, self.pt
        x = x.reshape(b, c, f // pt, pt, hh // p, p, ww // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # b t h w c pt p1 p2
        return x.reshape(b, f // pt, hh // p, ww // p, c * pt * p * p)


class Unpatchify(nn.Module):
    """Inverse of :class:`Patchify` (kept for the unused decoder head ``to_pixels`` of the checkpoint)."""

    def __init__(self, patch_size: int, temporal_patch_size: int, channels: int = 1) -> None:
        super().__init__()
        self.p, self.pt, self.c = patch_size, temporal_patch_size, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = x.shape
        p, pt, c = self.p, self.pt, self.c
        x = x.reshape(b, t, h, w, c, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, t * pt, h * p, w * p)


class CosineSimCodebook(nn.Module):
    """The codebook buffers of vector-quantize-pytorch 1.1.2 (``initted``, ``cluster_size``, ``embed``).

    ``embed`` rows are returned as they are (not normalised): the checkpoint's rows do not have unit norm.
    """

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = decay
        self.codebook_size = codebook_size
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(nn.init.kaiming_uniform_(torch.empty(1, codebook_size, dim)), dim=-1))

    @torch.no_grad()
    def ema_update_(self, flat_unit: torch.Tensor, indices: torch.Tensor) -> None:
        """Official training-mode EMA (decay 0.8) of ``cluster_size`` and ``embed``; (n, d) unit features, (n,) ids."""
        onehot = F.one_hot(indices, self.codebook_size).to(flat_unit.dtype)  # (n, c)
        bins = onehot.sum(0)[None]  # (1, c)
        self.cluster_size.lerp_(bins, 1 - self.decay)
        zero_mask = bins == 0
        embed_sum = (onehot.t() @ flat_unit)[None]  # (1, c, d)
        embed_mean = F.normalize(embed_sum / bins.masked_fill(zero_mask, 1.0)[..., None], dim=-1)
        embed_mean = torch.where(zero_mask[..., None], F.normalize(self.embed, dim=-1), embed_mean)
        self.embed.lerp_(embed_mean, 1 - self.decay)


class VectorQuantizer(nn.Module):
    """Nearest-code lookup by cosine similarity (argmax; vector-quantize-pytorch 1.1.2, ``use_cosine_sim=True``).

    Args:
        dim: token dimension.
        codebook_size: number of codes.
        ema_update: update the codebook by EMA in ``train()`` mode, as the official code does. Off by default:
            fine-tuning must leave the pretrained codebook untouched.
    """

    def __init__(self, dim: int, codebook_size: int, ema_update: bool = False) -> None:
        super().__init__()
        self._codebook = CosineSimCodebook(dim, codebook_size)
        self.ema_update = ema_update

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, dim) raw codebook rows."""
        return self._codebook.embed[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: x (B, N, d). Returns quantised (B, N, d), ids (B, N) int64, top-1 minus top-2 cosine (B, N)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats = x.float()
            unit = F.normalize(feats, dim=-1)
            embed = self.codebook
            cosine = unit @ F.normalize(embed, dim=-1).t()  # (B, N, C)
            top2 = cosine.detach().topk(2, dim=-1)
            indices = top2.indices[..., 0]
            margin = top2.values[..., 0] - top2.values[..., 1]
            quantized = F.embedding(indices, embed)
            if self.training and self.ema_update:
                self._codebook.ema_update_(unit.detach().reshape(-1, unit.shape[-1]), indices.reshape(-1))
            if torch.is_grad_enabled() and feats.requires_grad:
                quantized = feats + (quantized - feats).detach()  # straight-through estimator
        return quantized.to(x.dtype), indices, margin


class CTViT(nn.Module):
    """CT-CLIP's CTViT encoder (encoder and VQ only are used; the decoder heads exist for strict loading).

    Args:
        dim: token width (512 in CT-CLIP).
        codebook_size: VQ codebook size (8192).
        image_size: in-plane size H = W (480).
        patch_size: in-plane patch size (20).
        temporal_patch_size: patch depth along the slice axis (10).
        spatial_depth, temporal_depth: layers of the two transformers (4 each).
        dim_head, heads: attention head width and count (32, 8).
        channels: input channels (1).
        attn_dropout, ff_dropout: dropout rates (0 in CT-CLIP).
        ema_update: let ``train()`` mode update the codebook as the official code does (default off).
    """

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        image_size: int,
        patch_size: int,
        temporal_patch_size: int,
        spatial_depth: int,
        temporal_depth: int,
        dim_head: int = 64,
        heads: int = 8,
        channels: int = 1,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ema_update: bool = False,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        self.image_size = (image_size, image_size)
        self.patch_size = (patch_size, patch_size)
        self.temporal_patch_size = temporal_patch_size
        self.channels = channels
        self.dim = dim
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=heads)
        frame_dim = channels * patch_size * patch_size
        # first-frame path: unused by CT-CLIP, present in the checkpoint
        self.to_patch_emb_first_frame = nn.Sequential(
            Patchify(patch_size, 1), nn.LayerNorm(frame_dim), nn.Linear(frame_dim, dim), nn.LayerNorm(dim)
        )
        tubelet_dim = frame_dim * temporal_patch_size
        self.to_patch_emb = nn.Sequential(
            Patchify(patch_size, temporal_patch_size),
            nn.LayerNorm(tubelet_dim),
            nn.Linear(tubelet_dim, dim),
            nn.LayerNorm(dim),
        )
        kwargs = {
            "dim": dim,
            "dim_head": dim_head,
            "heads": heads,
            "attn_dropout": attn_dropout,
            "ff_dropout": ff_dropout,
        }
        self.enc_spatial_transformer = FactorizedTransformer(depth=spatial_depth, **kwargs)
        self.enc_temporal_transformer = FactorizedTransformer(depth=temporal_depth, **kwargs)
        self.vq = VectorQuantizer(dim, codebook_size, ema_update=ema_update)
        # decoder heads: unused by CT-CLIP, present in the checkpoint
        self.to_pixels_first_frame = nn.Sequential(nn.Linear(dim, frame_dim), Unpatchify(patch_size, 1, channels))
        self.to_pixels = nn.Sequential(
            nn.Linear(dim, tubelet_dim), Unpatchify(patch_size, temporal_patch_size, channels)
        )

    @property
    def patch_height_width(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer block in the backward pass (saves activation memory)."""
        self.enc_spatial_transformer.gradient_checkpointing = enabled
        self.enc_temporal_transformer.gradient_checkpointing = enabled

    def check_volume(self, volume: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``volume`` is (B, channels, D, image_size, image_size), D divisible."""
        expected = (
            f"(B, {self.channels}, D, {self.image_size[0]}, {self.image_size[1]}) "
            f"with D divisible by {self.temporal_patch_size}"
        )
        if volume.ndim != 5:
            raise ValueError(f"CTViT input must be 5-D {expected}; got shape {tuple(volume.shape)}")
        _, c, d, h, w = volume.shape
        if c != self.channels or (h, w) != self.image_size or d % self.temporal_patch_size or d == 0:
            raise ValueError(f"CTViT input must be {expected}; got shape {tuple(volume.shape)}")

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Spatial then temporal transformer. Args: tokens (B, t, h, w, d). Returns pre-VQ features (B, t, h, w, d)."""
        b, t, h, w, d = tokens.shape
        video_shape = (b, t, h, w)
        attn_bias = self.spatial_rel_pos_bias(h, w, device=tokens.device)
        x = tokens.reshape(b * t, h * w, d)
        x = self.enc_spatial_transformer(x, video_shape=video_shape, attn_bias=attn_bias)
        x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        x = self.enc_temporal_transformer(x, video_shape=video_shape)  # PEG reshape quirk lives inside
        return x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: features (B, t, h, w, d). Returns tokens (B, t, h, w, d), ids (B, t, h, w), VQ margin (B, t, h, w)."""
        b, t, h, w, d = features.shape
        quantized, ids, margin = self.vq(features.reshape(b, t * h * w, d))
        return quantized.reshape(b, t, h, w, d), ids.reshape(b, t, h, w), margin.reshape(b, t, h, w)

    def forward(
        self, volume: torch.Tensor, return_codebook_ids: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode a CT volume into post-VQ tokens (``return_encoded_tokens=True`` of the official code).

        Args:
            volume: (B, 1, D, H, W) float, D = axial slices, values in [-1, 1].
            return_codebook_ids: also return the (B, t, h, w) codebook ids.

        Returns:
            Tokens (B, t, h, w, dim) with t = D / temporal_patch_size, h = H / patch_size, w = W / patch_size.
        """
        self.check_volume(volume)
        features = self.encode(self.to_patch_emb(volume))
        tokens, ids, _ = self.quantize(features)
        return (tokens, ids) if return_codebook_ids else tokens
