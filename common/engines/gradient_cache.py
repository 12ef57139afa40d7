"""Gradient cache: a contrastive step over a large batch whose activation memory grows with a chunk, not the batch.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021 (GradCache).
The contrastive loss couples every pair of the batch, so plain gradient accumulation changes the loss (fewer
negatives). The gradient cache keeps the full-batch loss exactly:

1. embed the whole batch chunk by chunk **without** a graph, remembering each chunk's RNG state;
2. compute the loss on the concatenated embeddings and its gradient with respect to the embeddings (cheap);
3. re-run each chunk **with** a graph under the same RNG state (same dropout masks) and back-propagate the cached
   embedding gradients into the parameters.

Parameter gradients equal those of the full batch (tests/cleft/test_gradient_cache.py). Used as
``SupervisedTrainer(iteration_update=GradientCacheIteration(chunk_size))`` so handlers, checkpoints and logging
keep working; the network returns a dict (house pattern) and the loss takes ``(output_dict, targets)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.nn.parallel import DistributedDataParallel

__all__ = ["GradientCacheIteration", "split_batch"]


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    raise ValueError(f"cannot find the batch size: no tensor with a batch dimension among keys {sorted(batch)}")


def split_batch(batch: Mapping[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Split a batch dict along dim 0 into chunks of ``chunk_size``; tensors and lists are sliced, the rest shared."""
    size = _batch_size(batch)
    chunks = []
    for start in range(0, size, chunk_size):
        chunk = {}
        for key, value in batch.items():
            if (
                isinstance(value, torch.Tensor)
                and value.ndim > 0
                and value.shape[0] == size
                or isinstance(value, (list, tuple))
                and len(value) == size
            ):
                chunk[key] = value[start : start + chunk_size]
            else:
                chunk[key] = value
        chunks.append(chunk)
    return chunks


class _RngState:
    """CPU and CUDA RNG states at one moment, to replay a forward pass with the same dropout masks."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self):
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


class GradientCacheIteration:
    """A ``SupervisedTrainer`` iteration with the gradient cache.

    Args:
        chunk_size: samples per forward pass with a graph; peak activation memory scales with it.
        feature_keys: network outputs ``(B, D)`` the loss couples across the batch.
        scale_key: scalar network output with gradient (the learnable logit scale), or None.
    """

    def __init__(
        self,
        chunk_size: int,
        feature_keys: Sequence[str] = ("image_features", "text_features"),
        scale_key: str | None = "logit_scale",
    ) -> None:
        if int(chunk_size) <= 0:
            raise ValueError(f"gradient_cache_chunk_size must be a positive integer, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.feature_keys = tuple(feature_keys)
        self.scale_key = scale_key

    def _autocast(self, engine):
        if engine.amp:
            device_type = torch.device(engine.state.device).type if engine.state.device is not None else "cuda"
            return torch.autocast(device_type, **getattr(engine, "amp_kwargs", {}))
        return contextlib.nullcontext()

    def _check_outputs(self, out: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in (*self.feature_keys, *([self.scale_key] if self.scale_key else [])) if k not in out]
        if missing:
            raise ValueError(f"gradient cache: the network output lacks {missing}; it returned keys {sorted(out)}")

    def __call__(self, engine, batchdata: Mapping[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        prepared = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = prepared[0], prepared[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        network = engine.network
        network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        chunks = split_batch(inputs, self.chunk_size)

        # 1. embed every chunk without a graph, remembering the RNG state each one started from
        rng_states, cached = [], {k: [] for k in self.feature_keys}
        scale = None
        with torch.no_grad():
            for chunk in chunks:
                rng_states.append(_RngState())
                with self._autocast(engine):
                    out = network(chunk)
                self._check_outputs(out)
                for key in self.feature_keys:
                    cached[key].append(out[key].float())
                if self.scale_key is not None:
                    scale = out[self.scale_key].float()

        # 2. the full-batch loss and its gradient with respect to the embeddings (and the scale)
        leaves = {k: torch.cat(v).requires_grad_(True) for k, v in cached.items()}
        if self.scale_key is not None:
            leaves[self.scale_key] = scale.detach().requires_grad_(True)
        engine.state.output[Keys.PRED] = leaves
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(leaves, targets).mean()
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        use_scaler = engine.amp and engine.scaler is not None
        (engine.scaler.scale(loss) if use_scaler else loss).backward()
        chunk_grads = {k: leaves[k].grad.split(self.chunk_size) for k in self.feature_keys}

        # 3. re-run each chunk with a graph, same RNG, and push the cached gradients into the parameters
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            sync = index == last or not isinstance(network, DistributedDataParallel)
            no_sync = contextlib.nullcontext() if sync else network.no_sync()
            with no_sync, rng_states[index].replay(), self._autocast(engine):
                out = network(chunk)
                tensors = [out[k].float() for k in self.feature_keys]
                grads = [chunk_grads[k][index] for k in self.feature_keys]
                if self.scale_key is not None and index == last:  # once; on the synchronising pass under DDP
                    tensors.append(out[self.scale_key].float())
                    grads.append(leaves[self.scale_key].grad)
            torch.autograd.backward(tensors, grads)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if use_scaler:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        engine.state.output[Keys.PRED] = {k: v.detach() for k, v in leaves.items()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI may decollate the output from here on
        return engine.state.output
