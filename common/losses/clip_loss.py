"""CLIP's symmetric InfoNCE with a learnable, clamped temperature and cross-rank negatives.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021. The
distributed form follows open_clip's ``ClipLoss`` with ``local_loss=True``: each rank scores its own rows against
every rank's features. With ``gather_with_grad=True`` (the default) the gather is differentiable
(``torch.distributed.nn.functional.all_gather``), so the gradient of the full-batch loss flows back to every
rank's encoders. With ``gather_with_grad=False`` it does not (see :class:`ClipLoss`).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from common.losses.temperature import check_temperature
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LogitScale", "ClipLoss", "gather_features", "clip_logits"]


class LogitScale(nn.Module):
    """The learnable inverse temperature ``exp(t) = 1/tau`` of CLIP, clamped from above.

    CLIP initialises ``tau = 0.07`` (``t = log(1/0.07)``) and clamps ``exp(t)`` at 100 so that training cannot make
    the softmax arbitrarily sharp. The parameter lives in log space, so steps are multiplicative.

    Args:
        temperature_init: the initial temperature tau (not its inverse); CLIP uses 0.07. Checked by
            :func:`~common.losses.temperature.check_temperature`.
        max_scale: upper clamp of the scale ``1/tau``; CLIP uses 100.
        learnable: whether the scale is a trainable parameter; else a non-persistent buffer (a constant of
            ``temperature_init``, rebuilt with the module, so a state dict holds only what trains).
    """

    def __init__(self, temperature_init: float = 0.07, max_scale: float = 100.0, learnable: bool = True) -> None:
        super().__init__()
        tau = check_temperature(temperature_init, "temperature_init")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be positive, got {max_scale}")
        if 1 / tau > max_scale:
            raise ValueError(
                f"temperature_init={tau} gives a logit scale 1/tau={1 / tau:.4g} above max_scale={max_scale}"
            )
        log_init = torch.tensor(math.log(1 / tau), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(log_init)
        else:
            self.register_buffer("log_scale", log_init, persistent=False)
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        """The clamped scale, a scalar tensor."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def gather_features(features: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate ``features`` (B, D) from every rank; returns (world_B, D) and this rank's offset.

    With ``with_grad`` the gather is differentiable (``torch.distributed.nn.functional.all_gather``), so each
    rank's loss sends gradient to the features of every rank. Without it, the local slice keeps its graph and
    the others are constants (open_clip's ``gather_with_grad=False``), so no gradient crosses ranks. Single
    process: returned unchanged.
    """
    if not _distributed():
        return features, 0
    rank = torch.distributed.get_rank()
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            gathered = list(dist_fn.all_gather(features))
    else:
        gathered = [torch.zeros_like(features) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, features)
        gathered[rank] = features
    sizes = [g.shape[0] for g in gathered]
    return torch.cat(gathered, dim=0), sum(sizes[:rank])


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """``logit_scale * image_features @ text_features.T``, shape (B_image, B_text)."""
    return logit_scale * image_features @ text_features.t()


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: mean of image→text and text→image cross-entropy over the batch.

    Pair ``i`` of the batch is the positive of row ``i``; every other pair in the (gathered) batch is a negative.
    Under DDP, the local rows are scored against the features gathered from all ranks and the targets are
    offset by this rank's position (open_clip's ``local_loss=True`` form).

    With ``gather_with_grad=True`` this gives the gradient of the full-batch loss once DDP averages across
    ranks. With ``gather_with_grad=False`` the other ranks' features are constants: this rank's features get
    gradient only from its own rows, never from the terms where they are negatives of another rank's rows, so
    the gradient is **not** the full-batch one (it still trains, with less communication in the backward
    pass). A warning says so once per loss, on the first distributed call. Single process: both are the same.

    Args:
        gather_with_grad: gather features across ranks with gradient (default; the full-batch gradient).
        normalize: L2-normalise the features first. Models that already return normalised features may set
            this to False to save work.
        chunk_size: rows of the similarity matrix scored at a time (None or 0: all at once). Each chunk's
            ``(chunk, B)`` logits are recomputed in the backward pass (``torch.utils.checkpoint``) instead of kept,
            so the loss holds one chunk's logits, never the ``(B, B)`` matrix; the loss and its gradients are
            the full matrix's (up to float summation order).
    """

    def __init__(self, gather_with_grad: bool = True, normalize: bool = True, chunk_size: int | None = None) -> None:
        super().__init__()
        if chunk_size is not None and int(chunk_size) < 0:
            raise ValueError(f"chunk_size must be None, 0 (no chunks) or a positive number of rows, got {chunk_size}")
        self.gather_with_grad = gather_with_grad
        self.normalize = normalize
        self.chunk_size = int(chunk_size or 0)
        self._warned = False

    def _warn_partial_gradient(self) -> None:
        if self.gather_with_grad or self._warned or not _distributed():
            return
        self._warned = True
        warnings.warn(
            "ClipLoss(gather_with_grad=False) under DDP: each rank's features get gradient only from its own rows "
            "(the other ranks' features are constants), not the full-batch gradient; set gather_with_grad=True "
            "for the full-batch gradient",
            UserWarning,
            stacklevel=3,
        )

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
    ) -> torch.Tensor:
        """Args: image_features (B, D), text_features (B, D), logit_scale scalar. Returns the scalar loss."""
        if image_features.ndim != 2 or image_features.shape != text_features.shape:
            raise ValueError(
                f"ClipLoss needs image and text features of the same shape (B, D); got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        if image_features.shape[0] < 2 and not _distributed():
            raise ValueError("ClipLoss needs at least 2 pairs in a batch (one positive, one negative); got 1")
        self._warn_partial_gradient()
        if self.normalize:
            image_features = F.normalize(image_features, dim=-1)
            text_features = F.normalize(text_features, dim=-1)
        all_images, offset = gather_features(image_features, self.gather_with_grad)
        all_texts, _ = gather_features(text_features, self.gather_with_grad)
        rows = image_features.shape[0]
        targets = torch.arange(rows, device=image_features.device) + offset
        if not self.chunk_size or self.chunk_size >= rows:
            logits_per_image = clip_logits(image_features, all_texts, logit_scale)
            logits_per_text = clip_logits(text_features, all_images, logit_scale)
            return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets))
        logit_scale = torch.as_tensor(logit_scale, dtype=image_features.dtype, device=image_features.device)
        total = image_features.new_zeros(())
        for start in range(0, rows, self.chunk_size):
            part = slice(start, start + self.chunk_size)
            args = (image_features[part], text_features[part], all_images, all_texts, logit_scale, targets[part])
            if torch.is_grad_enabled():
                total = total + checkpoint(_summed_cross_entropies, *args, use_reentrant=False)
            else:
                total = total + _summed_cross_entropies(*args)
        return 0.5 * total / rows


def _summed_cross_entropies(
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    all_images: torch.Tensor,
    all_texts: torch.Tensor,
    logit_scale: torch.Tensor | float,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Summed image->text plus text->image cross-entropy of some rows (R, D) against every column (B, D)."""
    logits_per_image = clip_logits(image_rows, all_texts, logit_scale)
    logits_per_text = clip_logits(text_rows, all_images, logit_scale)
    return F.cross_entropy(logits_per_image, targets, reduction="sum") + F.cross_entropy(
        logits_per_text, targets, reduction="sum"
    )
