"""Project new images and reports (or ready embeddings) with trained projection heads.

``inference.json`` reads: :func:`inference_rows` (the data list) -> MONAI ``Dataset`` / ``DataLoader`` ->
``SupervisedEvaluator`` (the network on each batch dict) -> :class:`ProjectionWriter` (the output files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from common.data.atomic_io import write_json_atomic
from common.engines.checkpoint import save_safetensors
from common.methods.projection.embedding_extraction import extract_embeddings
from ignite.engine import Engine, Events
from safetensors.numpy import load_file

logger = logging.getLogger(__name__)

__all__ = ["ProjectionWriter", "inference_rows", "load_ready_embeddings"]


def load_ready_embeddings(path: str | Path, expected_dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Read precomputed embeddings from ``.safetensors`` (tensors ``image_embedding`` and/or ``text_embedding``,
    each (N, D)); every row must be finite and of the width the trained heads expect."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"embeddings file {path} must be .safetensors (tensors 'image_embedding' / 'text_embedding')")
    arrays = load_file(str(path))
    wanted = [k for k in ("image_embedding", "text_embedding") if k in arrays]
    if not wanted:
        raise ValueError(f"{path} holds neither 'image_embedding' nor 'text_embedding'; it has {sorted(arrays)}")
    for key in wanted:
        array = arrays[key]
        if array.ndim != 2:
            raise ValueError(f"{path}: tensor '{key}' must be (N, D), got shape {array.shape}")
        if expected_dims and key in expected_dims and array.shape[1] != expected_dims[key]:
            raise ValueError(
                f"{path}: tensor '{key}' has width {array.shape[1]}, the trained head expects {expected_dims[key]}"
            )
        bad_rows = np.where(~np.isfinite(array).all(axis=1))[0]
        if len(bad_rows):
            raise ValueError(f"{path}: tensor '{key}' has NaN/inf in row(s) {bad_rows[:10].tolist()} (0-based)")
    lengths = {arrays[k].shape[0] for k in wanted}
    if len(lengths) > 1:
        raise ValueError(f"{path}: image and text embeddings have different row counts {sorted(lengths)}")
    return {k: arrays[k].astype(np.float32) for k in wanted}


def inference_rows(
    model: torch.nn.Module,
    rows: Sequence[dict[str, Any]] | None = None,
    image_encoder=None,
    text_encoder=None,
    cache_dir: str | Path | None = None,
    embeddings_file: str | Path | None = None,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
) -> list[dict[str, Any]]:
    """The data list of an inference run: one ``{"id", "image_embedding" (D_i,), "text_embedding" (D_t,)}`` per row.

    Either ``embeddings_file`` (ready embeddings; ids are row numbers) or manifest ``rows`` with the frozen
    encoders (through the embedding cache; ids are the rows' ``id`` or image file stem). A modality that no row has
    is left out; a row whose image or report was skipped (``skip_bad_rows``) is left out of both.

    Args:
        model: the projection network (its heads' input widths check ready embeddings).
    """
    inputs: dict[str, np.ndarray] = {}
    if embeddings_file:
        dims = {"image_embedding": model.image_head.in_dim, "text_embedding": model.text_head.in_dim}
        inputs = load_ready_embeddings(embeddings_file, dims)
        ids = [str(i) for i in range(next(iter(inputs.values())).shape[0])]
    elif rows:
        kept_sets = []
        for modality, encoder, key in (
            ("image", image_encoder, "image_embedding"),
            ("text", text_encoder, "text_embedding"),
        ):
            if encoder is None or not any(r.get(modality if modality == "image" else "report") for r in rows):
                continue
            embeddings, kept = extract_embeddings(encoder, rows, modality, cache_dir, batch_size, skip_bad_rows)
            inputs[key] = embeddings
            kept_sets.append(kept)
        common_rows = sorted(set.intersection(*map(set, kept_sets))) if kept_sets else []
        for key, kept in zip(list(inputs), kept_sets):
            position = {row: i for i, row in enumerate(kept)}
            inputs[key] = inputs[key][[position[r] for r in common_rows]]
        ids = [str(rows[i].get("id") or Path(str(rows[i].get("image", i))).stem) for i in common_rows]
    else:
        raise ValueError("inference needs an embeddings_file or manifest rows (input_manifest) with encoders")
    tensors = {key: torch.as_tensor(array) for key, array in inputs.items()}
    return [{"id": row_id, **{key: t[i] for key, t in tensors.items()}} for i, row_id in enumerate(ids)]


class ProjectionWriter:
    """Evaluator handler: collects the projections of every batch and, when the run completes, writes
    ``projections.safetensors`` (``image_projection`` / ``text_projection``, (N, d_out), L2-normalisable) and
    ``projections.json`` (the ids, in row order) to ``output_dir``.

    Reads ``engine.state.output``: ``pred`` (the network's dict) and ``image`` (the batch dict, with ``id``).
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.ids: list[str] = []
        self.parts: dict[str, list[torch.Tensor]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.ids, self.parts = [], {}

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        self.ids.extend(str(i) for i in output["image"]["id"])
        for key in ("image_projection", "text_projection"):
            if key in output["pred"]:
                self.parts.setdefault(key, []).append(output["pred"][key].detach().float().cpu())

    def _write(self, engine: Engine) -> Path:
        outputs = {key: torch.cat(parts) for key, parts in self.parts.items()}
        path = save_safetensors(outputs, self.output_dir / "projections.safetensors", {"ids": self.ids})
        write_json_atomic(
            {"ids": self.ids, "tensors": {k: list(v.shape) for k, v in outputs.items()}},
            self.output_dir / "projections.json",
        )
        logger.info("wrote %s (%s)", path, {k: tuple(v.shape) for k, v in outputs.items()})
        return path
