"""A fingerprint of a model's weights, so caches and checkpoints record exactly which base model they belong to."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["state_dict_fingerprint", "FrozenModelIdentity"]


def state_dict_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module.state_dict()`` (names, shapes, dtypes and bytes), in order.

    Hashing the weights themselves (not a path or a name) catches a re-downloaded, re-trained or randomly
    re-initialised model alike. It reads each tensor once: about a second per GB.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.numel():
            digest.update(
                tensor.view(torch.uint8).numpy().tobytes() if tensor.dtype != torch.bool else tensor.numpy().tobytes()
            )
    return digest.hexdigest()


class FrozenModelIdentity:
    """Mixin for frozen encoders that wrap a Hugging Face model as ``self.model``: its width and its weight
    fingerprint, computed once (the weights do not change while frozen)."""

    model: torch.nn.Module

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def weights_sha256(self) -> str:
        if getattr(self, "_weights_sha256", None) is None:
            self._weights_sha256 = state_dict_fingerprint(self.model)
        return self._weights_sha256
