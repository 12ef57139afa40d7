"""frozen_projection counts the reports it cuts to ``text_max_length`` and logs the total after extraction."""

from __future__ import annotations

import logging

from common.methods.projection.embedding_extraction import extract_embeddings


def test_truncated_reports_are_counted_and_logged(tiny_text_encoder, tmp_path, caplog):
    encoder = tiny_text_encoder(max_length=8)
    rows = [
        {"report": "small effusion.", "row": 1, "manifest": "m.csv"},
        {"report": " ".join(["the heart is enlarged with a large left effusion"] * 4), "row": 2, "manifest": "m.csv"},
        {"report": " ".join(["no pneumothorax is seen on this radiograph today"] * 4), "row": 3, "manifest": "m.csv"},
    ]
    with caplog.at_level(logging.WARNING):
        embeddings, kept = extract_embeddings(encoder, rows, "text", tmp_path / "cache", batch_size=2, progress=False)
    assert embeddings.shape[0] == 3 and kept == [0, 1, 2]
    assert encoder.num_truncated == 2
    assert "text extraction: 2 report(s) longer than text_max_length=8 tokens were truncated" in caplog.text
