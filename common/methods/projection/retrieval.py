"""Report retrieval at inference: the reports of a manifest nearest to each projected image.

``inference.json`` adds :class:`RetrievalWriter` to the evaluator's handlers; with ``retrieval_manifest`` set, the
manifest's reports are embedded by the frozen text encoder (through the embedding cache), projected by the trained
text head, and ranked for every image by the cosine of the L2-normalised projections.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from common.data.atomic_io import write_json_atomic
from common.methods.projection.embedding_extraction import extract_embeddings
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["RetrievalWriter", "rank_reports"]


def rank_reports(image_projection: torch.Tensor, report_projection: torch.Tensor, top_k: int):
    """The ``top_k`` reports nearest to each image.

    Args:
        image_projection: (N, d) projected images.
        report_projection: (M, d) projected reports.
        top_k: neighbours per image (at most M).

    Returns:
        ``(scores (N, k), indices (N, k))``: cosine similarities, best first; ties keep the manifest's order.
    """
    scores = F.normalize(image_projection.float(), dim=-1) @ F.normalize(report_projection.float(), dim=-1).T
    ordered, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    k = min(int(top_k), scores.shape[1])
    return ordered[:, :k], indices[:, :k]


class RetrievalWriter:
    """Evaluator handler: collects the image projections of every batch and, when the run completes, writes
    ``retrieval.json`` to ``output_dir``: for each image id its ``top_k`` nearest reports of ``rows``
    (``{"rank", "id", "report", "score"}``, best first). Does nothing when ``rows`` is None (no
    ``retrieval_manifest``).

    Args:
        network: the trained :class:`~common.methods.projection.heads.DualProjectionModel` (its text head).
        text_encoder: the frozen text encoder of training (the checkpoint's base record is checked by the config).
        rows: the retrieval manifest's rows (``report``, optional ``id``), or None.
        output_dir: where ``retrieval.json`` goes.
        cache_dir: the embedding cache (reports are embedded once, then read from it).
        top_k: reports per image.
        batch_size: reports encoded per forward pass.
        skip_bad_rows: leave out a report that cannot be embedded (with a warning) instead of raising.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        text_encoder: Any,
        rows: Sequence[dict[str, Any]] | None,
        output_dir: str | Path,
        cache_dir: str | Path,
        top_k: int = 5,
        batch_size: int = 32,
        skip_bad_rows: bool = False,
    ) -> None:
        if int(top_k) < 1:
            raise ValueError(f"retrieval_top_k must be at least 1, got {top_k}")
        self.network, self.text_encoder, self.rows = network, text_encoder, rows
        self.output_dir, self.cache_dir = Path(output_dir), cache_dir
        self.top_k, self.batch_size, self.skip_bad_rows = int(top_k), batch_size, skip_bad_rows
        self.ids: list[str] = []
        self.parts: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        if self.rows is None:
            return
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.ids, self.parts = [], []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        if "image_projection" not in output["pred"]:
            raise ValueError("retrieval_manifest is set but the inference rows have no images: give an input_manifest "
                             "with an 'image' column (or an embeddings_file with 'image_embedding')")  # fmt: skip
        self.ids.extend(str(i) for i in output["image"]["id"])
        self.parts.append(output["pred"]["image_projection"].detach().float().cpu())

    def report_projections(self) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """(M, d) projected reports of the retrieval manifest and the rows kept (a skipped bad row is left out)."""
        embeddings, kept = extract_embeddings(
            self.text_encoder, self.rows, "text", self.cache_dir, self.batch_size, self.skip_bad_rows
        )
        if not kept:
            raise ValueError("retrieval_manifest: no report could be embedded; check its 'report' column")
        device = next(self.network.parameters()).device
        with torch.no_grad():
            projected = self.network.text_head(torch.as_tensor(embeddings, device=device)).float().cpu()
        return projected, [self.rows[i] for i in kept]

    def _write(self, engine: Engine) -> Path:
        reports, rows = self.report_projections()
        scores, indices = rank_reports(torch.cat(self.parts), reports, self.top_k)
        results = []
        for image_id, image_scores, image_indices in zip(self.ids, scores.tolist(), indices.tolist()):
            neighbours = [
                {"rank": rank + 1, "id": report_id(rows[i]), "report": rows[i]["report"], "score": score}
                for rank, (score, i) in enumerate(zip(image_scores, image_indices))
            ]
            results.append({"id": image_id, "neighbours": neighbours})
        manifest = rows[0].get("manifest")
        record = {"retrieval_manifest": str(manifest) if manifest else None, "top_k": self.top_k, "results": results}
        path = write_json_atomic(record, self.output_dir / "retrieval.json")
        logger.info("wrote %s (%d images, %d reports, top %d)", self.output_dir / "retrieval.json", len(results),
                    len(rows), self.top_k)  # fmt: skip
        return path


def report_id(row: dict[str, Any]) -> str:
    """A retrieval manifest row's name: its ``id`` column, else its image file stem, else ``row <n>``."""
    if row.get("id"):
        return str(row["id"])
    if row.get("image"):
        return Path(str(row["image"])).stem
    return f"row {row.get('row')}"
