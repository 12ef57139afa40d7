"""Project new images and reports (or ready embeddings) with trained projection heads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file

from common.data.atomic_io import write_json_atomic
from common.engines.checkpoint import save_safetensors
from common.methods.projection.embedding_extraction import extract_embeddings

logger = logging.getLogger(__name__)

__all__ = ["load_ready_embeddings", "run_projection_inference"]


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


@torch.no_grad()
def run_projection_inference(
    model: torch.nn.Module,
    output_dir: str | Path,
    rows: Sequence[dict[str, Any]] | None = None,
    image_encoder=None,
    text_encoder=None,
    cache_dir: str | Path | None = None,
    embeddings_file: str | Path | None = None,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
) -> Path:
    """Write ``projections.safetensors`` (``image_projection`` / ``text_projection``, L2-normalisable (N, d_out))
    and ``projections.json`` (the ids, in row order) to ``output_dir``.

    Either ``embeddings_file`` (ready embeddings) or ``rows`` with the frozen encoders (through the cache).
    """
    model.eval()
    device = next(model.parameters()).device
    ids: list[str]
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
        raise ValueError("inference needs an embeddings_file or manifest rows with encoders")
    outputs = {}
    for key, head in (("image_embedding", model.image_head), ("text_embedding", model.text_head)):
        if key in inputs:
            projected = [
                head(torch.as_tensor(inputs[key][s : s + 4096], device=device)).cpu()
                for s in range(0, len(inputs[key]), 4096)
            ]
            outputs[key.replace("embedding", "projection")] = torch.cat(projected)
    output_dir = Path(output_dir)
    path = save_safetensors(outputs, output_dir / "projections.safetensors", {"ids": ids})
    write_json_atomic(
        {"ids": ids, "tensors": {k: list(v.shape) for k, v in outputs.items()}}, output_dir / "projections.json"
    )
    logger.info("wrote %s (%s)", path, {k: tuple(v.shape) for k, v in outputs.items()})
    return path
