"""Merge-and-export of a trained report generator into plain Hugging Face folders for deployment.

The LoRA updates are merged into the LLM's weights (PEFT ``merge_and_unload``), so the exported model runs without
PEFT and without the adapter indirection. Layout of the export folder::

    llm/                    the merged causal LM (``save_pretrained``, safetensors) and its tokenizer
    vision/                 the vision encoder (merged too when it had LoRA)
    projector.safetensors   the projector
    base_models.json        the record of the checkpoint it came from, with the fingerprint of the merged weights
                            (the exported model is its own base: a projector there fits only these weights)

It loads back with ``ReportGenerator.from_config(image_model_path=<export>/vision, llm_path=<export>/llm)`` and
:func:`common.methods.report_gen.checkpoint.load_report_gen_checkpoint` on the same folder (projector only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.data.atomic_io import atomic_directory
from common.engines.checkpoint import save_safetensors, unwrap
from common.engines.save_handler import RECORD_FILE
from common.methods.report_gen.checkpoint import PROJECTOR_FILE, report_gen_fingerprint
from common.methods.report_gen.model import ReportGenerator
from common.weights.fingerprint import base_record
from peft import PeftModel

logger = logging.getLogger(__name__)

__all__ = ["export_merged"]


def export_merged(
    model: ReportGenerator, directory: str | Path, tokenizer: Any = None, record: dict[str, Any] | None = None
) -> Path:
    """Merge the adapters of ``model`` (in place) and write the plain model to ``directory``, atomically.

    Args:
        model: a report generator, typically loaded from a stage-2 checkpoint.
        directory: the export folder; replaced as a whole.
        tokenizer: saved next to the LLM so that ``llm/`` is a complete Hugging Face folder.
        record: written to ``base_models.json``.
    """
    model = unwrap(model)
    if isinstance(model.language_model, PeftModel):
        model.language_model = model.language_model.merge_and_unload()
    if isinstance(model.vision_encoder.model, PeftModel):
        model.vision_encoder.model = model.vision_encoder.model.merge_and_unload()
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        model.language_model.save_pretrained(str(tmp / "llm"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "llm"))
        model.vision_encoder.model.save_pretrained(str(tmp / "vision"), safe_serialization=True)
        header = {
            **(record or {}),
            "merged": True,
            **base_record(report_gen_fingerprint(model), str(directory / "llm")),
        }
        save_safetensors(model.projector.state_dict(), tmp / PROJECTOR_FILE, header)
        (tmp / RECORD_FILE).write_text(json.dumps(header, indent=2, default=str))
    logger.info("exported the merged report generator to %s", directory)
    return directory
