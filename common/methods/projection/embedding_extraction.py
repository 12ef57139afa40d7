"""Run a frozen encoder once over a manifest and keep its embeddings in the on-disk cache.

Only items whose content key is not cached yet are encoded, in batches, with a progress bar; each batch of
new embeddings is committed as its own shard, so an interrupted run resumes where it stopped. Under
``torch.distributed`` rank 0 extracts while the other ranks wait, then every rank reads the same cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import ignite.distributed as idist
import numpy as np
import torch
from common.data.embedding_cache import EmbeddingCache, NonFiniteEmbeddingError, hash_file_content, hash_text
from common.data.image_loading import describe_source
from common.errors import input_error
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["extract_embeddings", "extract_embedding_keys", "build_embedding_table", "BadRowError"]


class BadRowError(ValueError):
    """An item that cannot be embedded; the message names the manifest row and field."""


def _content_key(encoder, row: dict[str, Any], modality: str) -> tuple[str, Any]:
    """(content key, prepared text or None) of one row; raises BadRowError naming the row."""
    if modality == "text":
        text = encoder.prepare(row.get("report") or "")
        if not text.strip():
            raise BadRowError(f"empty report ({describe_source(row, 'report')})")
        return hash_text(text), text
    path = Path(row["image"])
    if not path.exists():
        raise BadRowError(f"image file not found: {path} ({describe_source(row, 'image')})")
    return hash_file_content(path), None


def _handle_bad(err: Exception, skip_bad_rows: bool, bad: list[str]) -> None:
    if not skip_bad_rows:
        raise err
    logger.warning("skipping bad row: %s", err)
    bad.append(str(err))


def extract_embeddings(
    encoder,
    rows: Sequence[dict[str, Any]],
    modality: str,
    cache_dir: str | Path,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Embed ``rows`` (manifest rows) with a frozen ``encoder``, through the cache.

    :func:`extract_embedding_keys`, then every kept row's embedding read from the cache (arguments alike).

    Returns:
        ``(embeddings (N_kept, D) float32, kept row indices)``.
    """
    cache, keys, kept = extract_embedding_keys(encoder, rows, modality, cache_dir, batch_size, skip_bad_rows, progress)
    return _read_rows(cache, keys, kept, rows, modality), kept


def _read_rows(cache: EmbeddingCache, keys: list[str], kept: list[int], rows: Sequence[dict], modality: str):
    """(N_kept, D) float32 embeddings of ``keys``; a non-finite cached row names the manifest row it belongs to."""
    try:
        return cache.get(keys)
    except NonFiniteEmbeddingError as err:  # a corrupted cache file
        row = next((rows[i] for i, key in zip(kept, keys) if key == err.key), None)
        source = describe_source(row, "report" if modality == "text" else "image") if row else "an unknown row"
        raise NonFiniteEmbeddingError(f"{modality} embedding of {source}: {err}", err.key, err.location) from None


def extract_embedding_keys(
    encoder,
    rows: Sequence[dict[str, Any]],
    modality: str,
    cache_dir: str | Path,
    batch_size: int = 32,
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> tuple[EmbeddingCache, list[str], list[int]]:
    """Embed the ``rows`` (manifest rows) not cached yet with a frozen ``encoder``; the cache keys of all of them.

    Args:
        encoder: a :class:`~common.text.frozen_text_encoder.FrozenTextEncoder` or
            :class:`~common.vision.frozen_image_encoder.FrozenImageEncoder` (``identity``, ``prepare``, ``forward``).
        rows: manifest rows (``image`` and/or ``report`` fields, with ``row``/``manifest`` context for errors).
        modality: ``"image"`` or ``"text"``.
        cache_dir: root of the embedding cache.
        batch_size: items encoded per forward pass (and per committed shard).
        skip_bad_rows: warn once per bad row and leave it out (with a count) instead of raising.
        progress: show a progress bar while encoding.

    Returns:
        ``(cache space of the encoder, cache key of each kept row, kept row indices)``.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    identity = encoder.identity()
    bad: list[str] = []
    # rank 0 reads the files and fills the cache; then every other rank reads the same files and the cache
    with idist.one_rank_first():
        is_first = idist.get_rank() == 0
        cache = EmbeddingCache(cache_dir, identity)
        keys: list[str | None] = []
        texts: dict[str, str] = {}
        first_row: dict[str, dict[str, Any]] = {}  # one row per distinct content, for loading and error messages
        for row in rows:
            try:
                key, text = _content_key(encoder, row, modality)
            except BadRowError as err:
                _handle_bad(err, skip_bad_rows, bad)
                keys.append(None)
                continue
            keys.append(key)
            first_row.setdefault(key, row)
            if text is not None:
                texts[key] = text
        todo = cache.missing(k for k in keys if k is not None)
        if is_first:
            logger.info(
                "%s embeddings: %d rows, %d cached, %d to compute",
                modality,
                len(rows),
                len(first_row) - len(todo),
                len(todo),
            )
            failed = _encode_missing(
                encoder, cache, todo, texts, first_row, modality, batch_size, skip_bad_rows, bad, progress
            )
            keys = [None if k in failed else k for k in keys]
            if todo:
                cache.compact()  # one shard: a shuffled training batch is then one read of one memory map
        elif todo and not skip_bad_rows:
            raise RuntimeError(
                f"rank {idist.get_rank()}: {len(todo)} {modality} embeddings that rank 0 should have cached are missing"
            )
        else:
            keys = [None if k in todo else k for k in keys]  # rank 0 skipped these rows as bad
    if bad:
        logger.warning("%s extraction: skipped %d bad row(s) of %d", modality, len(bad), len(rows))
    if getattr(encoder, "num_truncated", 0):
        logger.warning(
            "%s extraction: %d report(s) longer than text_max_length=%s tokens were truncated",
            modality,
            encoder.num_truncated,
            getattr(encoder, "max_length", "?"),
        )
    kept = [i for i, k in enumerate(keys) if k is not None]
    if not kept:
        raise ValueError(f"no {modality} embedding could be computed: all {len(rows)} rows were bad")
    return cache, [keys[i] for i in kept], kept


def _encode_missing(
    encoder, cache, todo, texts, first_row, modality, batch_size, skip_bad_rows, bad, progress
) -> set[str]:
    """Encode the uncached keys batch by batch, committing a shard per batch; returns keys that failed."""
    failed: set[str] = set()
    if not todo:
        return failed
    bar = tqdm(total=len(todo), desc=f"embedding {modality}s", unit=modality, disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        inputs, batch_keys = [], []
        for key in chunk:
            if modality == "text":
                inputs.append(texts[key])
                batch_keys.append(key)
                continue
            try:
                inputs.append(encoder.prepare(first_row[key]))
                batch_keys.append(key)
            except Exception as err:  # MONAI's Compose wraps the loader's ValueError in a RuntimeError
                cause = input_error(err)
                if cause is None:
                    raise  # not bad input: a bug, shown with its traceback
                failed.add(key)
                _handle_bad(BadRowError(str(cause)), skip_bad_rows, bad)
        if batch_keys:
            batch = inputs if modality == "text" else torch.stack(inputs)
            embeddings = encoder(batch).cpu().numpy()
            finite = np.isfinite(embeddings).all(axis=1)
            for key, ok in zip(batch_keys, finite):
                if not ok:
                    source = describe_source(first_row[key], "report" if modality == "text" else "image")
                    failed.add(key)
                    _handle_bad(BadRowError(f"the encoder produced NaN/inf for {source}"), skip_bad_rows, bad)
            good = [k for k, ok in zip(batch_keys, finite) if ok]
            if good:
                cache.add(good, embeddings[finite])
        bar.update(len(chunk))
    bar.close()
    return failed


def build_embedding_table(
    rows: Sequence[dict[str, Any]],
    image_encoder,
    text_encoder,
    cache_dir: str | Path,
    label_key: str = "label",
    batch_size: int = 32,
    skip_bad_rows: bool = False,
) -> list[dict[str, Any]]:
    """Image and text embeddings of every row, as dataset items for the projection heads.

    Returns dicts ``{"image_embedding" (D_i,), "text_embedding" (D_t,), "image_key", "text_key", "label",
    "split", "id", "row", "manifest"}`` for the rows whose image and text could both be embedded (the keys are the
    rows' cache keys, which :func:`~common.methods.projection.cached_dataset.cached_table_dataset` reads through).
    """
    embedded = {}
    for modality, encoder in (("image", image_encoder), ("text", text_encoder)):
        cache, keys, kept = extract_embedding_keys(encoder, rows, modality, cache_dir, batch_size, skip_bad_rows)
        embedded[modality] = dict(zip(kept, zip(_read_rows(cache, keys, kept, rows, modality), keys)))
    image_at, text_at = embedded["image"], embedded["text"]
    table = []
    for index in sorted(set(image_at) & set(text_at)):
        row = rows[index]
        if label_key not in row:
            raise ValueError(
                f"row {row.get('row', index + 1)} of {row.get('manifest', 'the manifest')}: field '{label_key}' missing"
            )
        table.append(
            {
                "image_embedding": image_at[index][0],
                "text_embedding": text_at[index][0],
                "image_key": image_at[index][1],
                "text_key": text_at[index][1],
                "label": row[label_key],
                "split": row.get("split", ""),
                "id": str(row.get("id") or Path(str(row.get("image", index))).stem),
                "row": row.get("row", index + 1),
                "manifest": str(row.get("manifest", "")),  # names the manifest in split-size errors
            }
        )
    return table
