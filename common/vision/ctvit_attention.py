"""Building blocks of CTViT's factorised transformer, state-dict compatible with the official CT-CLIP code.

CTViT (Hamamci et al., "GenerateCT", arXiv 2305.16037; used as the image encoder of CT-CLIP, arXiv 2403.17834)
descends from lucidrains' phenaki-pytorch C-ViViT. The module names and parameter shapes below mirror
``transformer_maskgit/attention.py`` of ibrahimethemhamamci/CT-CLIP (commit a2a155c) so that ``CT-CLIP_v2.pt``
loads with ``strict=True``. Behaviour that the pretrained weights depend on is reproduced on purpose:

- cosine-similarity attention with a fixed logit scale of 8 and learned per-dimension ``q_scale``/``k_scale``;
- only the query sees the attention's LayerNorm: keys and values are projected from the raw residual stream;
- the PEG (a depthwise 3D conv) reshapes its input to the *video* shape ``(b, t, h, w, d)`` in both the spatial
  and the temporal transformer, which in the temporal pass runs on a scrambled grid (the weights were trained so).

Unlike the official code nothing is pinned to CUDA, attention runs through ``F.scaled_dot_product_attention``,
and each block can be gradient-checkpointed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "GEGLU",
    "PEG",
    "BiaslessLayerNorm",
    "ContinuousPositionBias",
    "CosineSimAttention",
    "FactorizedTransformer",
    "feed_forward",
]


class BiaslessLayerNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias (a persistent buffer, as in the official checkpoint)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): the first half of the features is the value, the second half the gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


def feed_forward(dim: int, mult: int = 4, dropout: float = 0.0) -> nn.Sequential:
    """``LayerNorm -> Linear(dim, 2*inner) -> GEGLU -> Dropout -> Linear(inner, dim)``, inner = int(mult*2/3*dim)."""
    inner_dim = int(mult * (2 / 3) * dim)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim * 2, bias=False),
        GEGLU(),
        nn.Dropout(dropout),
        nn.Linear(inner_dim, dim, bias=False),
    )


class PEG(nn.Module):
    """Position-generating depthwise ``Conv3d`` over the token grid (Chu et al., CPVT, arXiv 2102.10882).

    "Causal" padding pads the first grid axis by two tokens before and none after; the other two by one each.
    """

    def __init__(self, dim: int, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, video_shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Args: x (N, L, d) tokens whose memory is reshaped, as is, to ``(*video_shape, d)``. Returns (N, L, d)."""
        orig_shape = x.shape
        grid = x.reshape(*video_shape, -1).permute(0, 4, 1, 2, 3)  # (b, d, t, h, w)
        frame_padding = (2, 0) if self.causal else (1, 1)
        grid = F.pad(grid, (1, 1, 1, 1, *frame_padding), value=0.0)
        grid = self.dsconv(grid)
        return grid.permute(0, 2, 3, 4, 1).reshape(orig_shape)


class CosineSimAttention(nn.Module):
    """Multi-head cosine-similarity self-attention (Henry et al., "Query-Key Normalization", arXiv 2010.04245).

    Parameter names follow the official ``Attention`` so checkpoints load strictly; ``context_norm`` and the
    zero-size ``null_kv`` exist only for that reason (no cross-attention, no null key/values).
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, dropout: float = 0.0, scale: float = 8.0) -> None:
        super().__init__()
        self.heads = heads
        self.scale = scale
        self.dropout = dropout
        inner_dim = dim_head * heads
        self.norm = BiaslessLayerNorm(dim)
        self.context_norm = BiaslessLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.empty(heads, 0, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (N, L, dim); attn_bias (heads, L, L) or None. Returns (N, L, dim)."""
        kv_input = x  # keys/values come from the un-normalised stream, as in the official code
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = map(self._split_heads, (q, k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        n, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class ContinuousPositionBias(nn.Module):
    """Log-spaced continuous relative position bias of Swin V2 (Liu et al., arXiv 2111.09883) on an (h, w) grid.

    The MLP output is cached while its weights are unchanged and no gradient is needed (it costs
    ~0.2 TFLOP per forward on the 24x24 grid of the full model).
    """

    def __init__(self, dim: int, heads: int, num_dims: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(num_dims, dim), nn.LeakyReLU(0.1))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)))
        self.net.append(nn.Linear(dim, heads))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _cache_key(self, dims: tuple[int, ...], device: torch.device) -> tuple:
        return (dims, str(device), tuple((p.data_ptr(), p._version) for p in self.parameters()))

    def forward(self, *dims: int, device: torch.device | None = None) -> torch.Tensor:
        """Args: dims grid sizes (h, w). Returns the bias (heads, h*w, h*w) in float32."""
        device = device if device is not None else self.net[-1].weight.device
        # a trace records the MLP (a cached tensor would become a constant of one trace and not of its check)
        needs_grad = torch.jit.is_tracing() or (
            torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        )
        key = self._cache_key(tuple(dims), device)
        if not needs_grad and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        positions = [torch.arange(d, device=device) for d in dims]
        grid = torch.stack(torch.meshgrid(*positions, indexing="ij")).flatten(1).t()  # (h*w, 2), row-major
        rel_pos = (grid[:, None, :] - grid[None, :, :]).float()
        rel_pos = torch.sign(rel_pos) * torch.log(rel_pos.abs() + 1)
        with torch.autocast(device_type=device.type, enabled=False):
            for layer in self.net:
                rel_pos = layer(rel_pos.float())
        bias = rel_pos.permute(2, 0, 1).contiguous()
        if not needs_grad:
            self._cache = (key, bias.detach())
        return bias


class FactorizedTransformer(nn.Module):
    """CTViT's encoder transformer: per layer ``x + PEG(x)``, ``x + Attn(x)``, ``x + FF(x)``; then ``norm_out``.

    ``layers.N`` is ``[PEG, Attention, None (no cross-attention), FeedForward]`` so state-dict keys read
    ``layers.N.0.dsconv.weight``, ``layers.N.1.to_q.weight``, ``layers.N.3.1.weight``, as in the checkpoint.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        peg_causal: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PEG(dim, causal=peg_causal),
                    CosineSimAttention(dim, dim_head=dim_head, heads=heads, dropout=attn_dropout),
                    None,
                    feed_forward(dim, mult=ff_mult, dropout=ff_dropout),
                ]
            )
            for _ in range(depth)
        )
        self.norm_out = BiaslessLayerNorm(dim)
        self.gradient_checkpointing = False

    @staticmethod
    def _block(
        x: torch.Tensor,
        peg: PEG,
        attn: CosineSimAttention,
        ff: nn.Sequential,
        video_shape: tuple[int, int, int, int],
        attn_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        x = peg(x, video_shape) + x
        x = attn(x, attn_bias=attn_bias) + x
        return ff(x) + x

    def forward(
        self, x: torch.Tensor, video_shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: x (N, L, dim); video_shape (b, t, h, w) of the token grid; attn_bias (heads, L, L).

        Returns (N, L, dim).
        """
        for peg, attn, _, ff in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, x, peg, attn, ff, video_shape, attn_bias, use_reentrant=False)
            else:
                x = self._block(x, peg, attn, ff, video_shape, attn_bias)
        return self.norm_out(x)
