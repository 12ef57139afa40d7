"""Data wiring of the report generator: manifest rows with cleaned reports, the prompt template, the collates.

Reports are cleaned once here (sections, "XXXX" placeholders, whitespace); a report that is empty after cleaning
is an error that names the manifest row (or, with ``skip_bad_rows``, a warning per row and a count).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.data.atomic_io import write_json_atomic
from common.data.manifest import ManifestError, load_manifest
from common.data.report_cleaning import clean_report, has_report_text
from common.data.report_tokenization import (
    MAX_UNKNOWN_TOKEN_RATE,
    ReportCollator,
    build_word_level_tokenizer,
    warn_unknown_tokens,
)
from common.engines.checkpoint_provenance import DATA_KEY, training_data_record
from common.peft.soft_visual_prompt import PromptTemplate
from common.weights.hf_loading import load_tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_RECORD = "built_from.json"  # beside a built tokenizer: the record of the rows it was built from

__all__ = ["count_visual_tokens", "load_or_build_tokenizer", "load_report_rows", "make_collators"]


def load_report_rows(
    manifest: str | Path,
    dataset_dir: str | Path | None = None,
    split: str | Sequence[str] | None = None,
    sections: Sequence[str] | None = ("findings", "impression"),
    placeholder: str | None = "",
    lowercase: bool = True,
    skip_bad_rows: bool = False,
    check_files: bool = True,
    max_rows: int | None = None,
    with_reports: bool = True,
) -> list[dict[str, Any]]:
    """Manifest rows (``image``, ``report``, ``id``) with cleaned reports.

    Args:
        manifest: CSV/JSONL manifest (columns ``image``, ``report``, optional ``id``, ``split``, ``patient_id``).
        dataset_dir: root of relative image paths.
        split: keep this split (or these splits).
        sections: report sections to keep, in order (None keeps the whole text).
        placeholder: replacement of "XXXX" placeholders ("" removes them, None keeps them).
        lowercase: lower-case the reports (R2Gen / R2GenGPT practice).
        skip_bad_rows: warn and skip bad rows (missing image, empty report) instead of raising.
        check_files: check that the image files exist.
        max_rows: keep only the first rows (quick runs).
        with_reports: False for inference on images alone (no report column needed).
    """
    rows = load_manifest(
        manifest,
        dataset_dir,
        split=split,
        require_report=with_reports,
        check_files=check_files,
        skip_bad_rows=skip_bad_rows,
    )
    kept, skipped = [], 0
    for row in rows:
        row_id = str(row.get("id") or Path(str(row.get("image", ""))).stem or row["row"])
        if not with_reports:
            kept.append({k: v for k, v in {**row, "id": row_id}.items() if k != "report"})
            continue
        report = clean_report(row["report"], sections=sections, placeholder=placeholder, lowercase=lowercase)
        if not has_report_text(report):  # the one rule (common.data.report_cleaning), after section selection
            message = (
                f"{row['manifest']}: row {row['row']}: field 'report' has no words after cleaning "
                f"(sections {list(sections) if sections else 'all'}): {row['report']!r}"
            )
            if not skip_bad_rows:
                raise ManifestError(message)
            logger.warning("skipping bad row: %s", message)
            skipped += 1
            continue
        kept.append({**row, "report": report, "id": row_id})
    if skipped:
        logger.warning("%s: skipped %d row(s) whose report is empty after cleaning", manifest, skipped)
    if not kept:
        raise ManifestError(f"{manifest}: no usable rows for split {split!r}")
    return kept[:max_rows] if max_rows else kept


# under DDP rank 0 builds and saves the demo tokenizer first and the other ranks then load it: without the barrier a
# rank could read the folder half-written (tokenizer.json saved, built_from.json not yet) or write it at the same time
@idist.one_rank_first()
def load_or_build_tokenizer(
    tokenizer_path: str | Path | None,
    demo_rows: Sequence[dict[str, Any]] | None = None,
    save_dir: str | Path | None = None,
    allow_other_run_weights: bool = False,
    max_unknown_rate: float = MAX_UNKNOWN_TOKEN_RATE,
):
    """The LLM's tokenizer from a local folder; without one, a word-level tokenizer trained on ``demo_rows`` reports.

    The built tokenizer is saved to ``save_dir`` (the run's checkpoint folder) with ``built_from.json``, the record
    of the rows it was built from (:func:`common.engines.checkpoint_provenance.training_data_record`), and reloaded
    from there on later runs, so training, evaluation and inference of one run share one vocabulary. A stored
    tokenizer built from other rows than ``demo_rows`` (the demo's, on real reports) is refused unless
    ``allow_other_run_weights``: its vocabulary is another data set's, and the checkpoints beside it were trained
    with it. Whatever the tokenizer, the rate of ``<unk>`` tokens in ``demo_rows`` over ``max_unknown_rate`` is a
    warning with the figure.

    Raises:
        ValueError: the stored tokenizer was built from other rows (the message names both and what to do).
    """
    record_file = Path(save_dir) / TOKENIZER_RECORD if save_dir is not None else None
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path, key="tokenizer_path")
    elif save_dir is not None and (Path(save_dir) / "tokenizer.json").is_file():
        _check_stored_tokenizer(Path(save_dir), demo_rows, allow_other_run_weights)
        tokenizer = load_tokenizer(save_dir, key="tokenizer_path")
    elif demo_rows:
        tokenizer = build_word_level_tokenizer(
            [r["report"] for r in demo_rows] + ["findings of the chest x-ray :"], save_dir
        )
        if record_file is not None:
            write_json_atomic(training_data_record(demo_rows), record_file)
    else:
        raise ValueError("tokenizer_path is empty and there are no reports to build a demo tokenizer from")
    if tokenizer.pad_token_id is None:  # Llama tokenizers have no pad token; pad with EOS, masked from the loss
        tokenizer.pad_token = tokenizer.eos_token
    if demo_rows:
        warn_unknown_tokens(tokenizer, [r["report"] for r in demo_rows], max_unknown_rate, "the train reports")
    return tokenizer


def _check_stored_tokenizer(folder: Path, rows: Sequence[dict[str, Any]] | None, allow: bool) -> None:
    recorded = json.loads((folder / TOKENIZER_RECORD).read_text()) if (folder / TOKENIZER_RECORD).is_file() else {}
    where = (
        f"built from {recorded.get('training_manifest')} ({recorded.get('training_rows')} train rows)"
        if recorded
        else "with no record of the reports it was built from"
    )
    if not rows:  # inference: no reports to compare with
        logger.info("tokenizer %s: %s", folder, where)
        return
    current = training_data_record(rows)
    if recorded.get(DATA_KEY) == current[DATA_KEY]:
        return
    message = (
        f"the tokenizer stored in {folder} was {where}, but the train split given now is "
        f"{current['training_manifest']} ({current['training_rows']} rows): its vocabulary is another data set's. "
        "Use a new bundle_root (or ckpt_dir) for this data set, set tokenizer_path to your LLM's tokenizer, or "
        f"delete {folder} to build one from these reports (the checkpoints beside it were trained with the old one)"
    )
    if not allow:
        raise ValueError(message)
    logger.warning("%s; allow_other_run_weights is set: using it", message.split(". Use a new")[0])


@torch.no_grad()
def count_visual_tokens(network: torch.nn.Module, image_size: Sequence[int], channels: int = 1) -> int:
    """Number of visual tokens the network's vision encoder gives for one ``(channels, *image_size)`` image."""
    encoder = getattr(network, "module", network).vision_encoder
    device = next(encoder.parameters()).device
    return int(encoder(torch.zeros(1, channels, *image_size, device=device)).shape[1])


def make_collators(
    tokenizer, template: str, num_visual_tokens: int, text_max_length: int, add_bos: bool = True
) -> tuple[ReportCollator, ReportCollator]:
    """``(train_collate, generate_collate)``: prompt + report with labels, and the prompt alone for generation."""
    prompt = PromptTemplate.from_text(template, tokenizer, num_visual_tokens, add_bos=add_bos)
    return (
        ReportCollator(tokenizer, prompt, text_max_length, with_targets=True),
        ReportCollator(tokenizer, prompt, text_max_length, with_targets=False),
    )
