"""Engine pieces of the report generator: the LM loss in house form, a generation iteration for MONAI's
``SupervisedEvaluator`` and a handler that writes generated reports (JSONL) and their metrics (JSON) to ``eval/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from common.data.atomic_io import write_text_atomic
from common.engines.distributed import all_gather_rows
from common.metrics.clinical_efficacy import clinical_efficacy_metrics
from common.metrics.nlg import nlg_metrics
from ignite.engine import Engine, Events
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ReportGenerationIteration", "ReportGenerationWriter", "ReportLMLoss"]


class ReportLMLoss(nn.Module):
    """``loss(output_dict, targets)``: the network's masked next-token cross-entropy over report tokens."""

    def forward(self, output: Mapping[str, torch.Tensor], targets: object = None) -> torch.Tensor:
        if "loss" not in output:
            raise ValueError("the report generator returned no 'loss': the training batch needs 'labels'")
        return output["loss"]


class ReportGenerationIteration:
    """``iteration_update`` for ``SupervisedEvaluator``: generate reports for a batch with Hugging Face ``generate``.

    Args:
        tokenizer: decodes the generated ids.
        num_beams: beam width (1 = greedy).
        max_new_tokens: upper bound on generated tokens.
        repetition_penalty: penalty on repeated tokens (1.0 = none).
        use_cache: KV cache during generation.
        generate_kwargs: other ``generate`` options (``min_new_tokens``, ``length_penalty``, ``no_repeat_ngram_size``).

    Returns (per iteration, as ``engine.state.output``): ``{"id": [...], "generated": [...], "reference": [...]}``.
    """

    def __init__(
        self,
        tokenizer,
        num_beams: int = 3,
        max_new_tokens: int = 100,
        repetition_penalty: float = 1.0,
        use_cache: bool = True,
        **generate_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.options = dict(
            num_beams=int(num_beams),
            max_new_tokens=int(max_new_tokens),
            repetition_penalty=float(repetition_penalty),
            use_cache=bool(use_cache),
            **generate_kwargs,
        )

    def __call__(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, list[str]]:
        batch, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        network = getattr(engine.network, "module", engine.network)
        network.eval()
        with torch.no_grad():
            ids = network.generate(batch, **self.options)
        generated = [" ".join(t.split()) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        references = list(batch.get("report") or [""] * len(generated))  # inference on images alone: no references
        return {"id": list(batch["id"]), "generated": generated, "reference": references}


class ReportGenerationWriter:
    """Collect generated reports over an evaluator epoch; write ``<prefix>.jsonl`` and ``<prefix>_metrics.json``.

    The references are the full cleaned reports (never the truncated training targets). The scores are also put
    into ``engine.state.metrics`` (so ``key_metric`` / best-checkpoint logic can use BLEU-4). Under DDP every rank
    gathers the records in dataset order (the files equal a one-process run's, line for line); only rank 0 scores and
    writes.

    Args:
        output_dir: folder of the files (the bundle's ``eval/``).
        prefix: file name prefix (e.g. ``"test_generated"``).
        meteor: run METEOR (None: when Java is present).
        chexbert_path, radgraph_path: local weights of the optional clinical-efficacy metrics.
        extra: values recorded in the metrics file (checkpoint, decoding settings).
    """

    def __init__(
        self,
        output_dir: str | Path,
        prefix: str = "generated",
        meteor: bool | None = None,
        chexbert_path: str | Path | None = None,
        radgraph_path: str | Path | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.meteor = meteor
        self.chexbert_path = chexbert_path
        self.radgraph_path = radgraph_path
        self.extra = dict(extra or {})
        self.records: list[dict[str, str]] = []
        self.last_metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []

    def collect(self, engine: Engine) -> None:
        out = engine.state.output
        self.records.extend(
            {"id": str(i), "generated": g, "reference": r}
            for i, g, r in zip(out["id"], out["generated"], out["reference"])
        )

    def score(self, records: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        hyps = [r["generated"] for r in records]
        refs = [r["reference"] for r in records]
        metrics: dict[str, Any] = nlg_metrics(hyps, refs, meteor=self.meteor)
        metrics.update(clinical_efficacy_metrics(hyps, refs, self.chexbert_path, self.radgraph_path))
        lengths = [len(h.split()) for h in hyps]
        metrics["mean_generated_words"] = sum(lengths) / len(lengths)
        metrics["mean_reference_words"] = sum(len(r.split()) for r in refs) / len(refs)
        return metrics

    def write(self, engine: Engine) -> None:
        records = all_gather_rows(self.records)  # every rank's studies, in dataset order
        if idist.get_rank() != 0:
            return
        has_references = bool(records) and all(r["reference"] for r in records)
        metrics = (
            self.score(records)
            if has_references
            else {"num_reports": len(records), "metrics": "skipped: no references"}
        )
        self.last_metrics = metrics
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_text_atomic(lines, self.output_dir / f"{self.prefix}.jsonl")
        summary = {**metrics, **self.extra, "epoch": engine.state.epoch}
        write_text_atomic(json.dumps(summary, indent=2, default=str), self.output_dir / f"{self.prefix}_metrics.json")
        engine.state.metrics.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        logger.info("report generation on %d studies: %s -> %s", len(records), shown, self.output_dir)
