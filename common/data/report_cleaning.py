"""Radiology report text cleaning: sections, de-identification placeholders, whitespace.

Reports arrive with section headers ("FINDINGS:", "IMPRESSION:"), de-identification placeholders (the IU
X-ray collection writes "XXXX" for removed words), line breaks inside sentences and odd spacing. Cleaning is
deterministic, so it can be part of an embedding-cache key.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["clean_report", "extract_sections", "has_report_text", "CLEANING_VERSION"]

CLEANING_VERSION = "2"  # bump when the output of clean_report changes: it invalidates embedding caches

# known section headers, at a line start or mid-line ("FINDINGS: ... IMPRESSION: ..." on one line is common)
_SECTION_HEADER = re.compile(
    r"(?i)(?:^|(?<=[\s.]))(CLINICAL HISTORY|FINDINGS|IMPRESSION|INDICATION|COMPARISON|HISTORY|TECHNIQUE|EXAMINATION|"
    r"CONCLUSION)\s*:\s*"
)
_PLACEHOLDER = re.compile(r"\bX{2,}\b")
_NUMBERED = re.compile(r"(?m)(^\s*|(?<=[.;])\s+)\d+\.\s+")  # "1. ", "2. " list markers


def extract_sections(text: str) -> dict[str, str]:
    """Split ``"FINDINGS: ... IMPRESSION: ..."`` into ``{"findings": ..., "impression": ...}`` (lower-case keys).

    Text before the first header is returned under ``""``.
    """
    sections: dict[str, str] = {}
    matches = list(_SECTION_HEADER.finditer(text))
    if not matches:
        return {"": text.strip()}
    if matches[0].start() > 0 and text[: matches[0].start()].strip():
        sections[""] = text[: matches[0].start()].strip()
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        sections[match.group(1).strip().lower()] = text[match.end() : end].strip()
    return sections


def clean_report(
    text: str, sections: Sequence[str] | None = None, placeholder: str | None = "", lowercase: bool = False
) -> str:
    """Normalise a report.

    Args:
        text: the raw report.
        sections: keep only these sections, in this order (e.g. ``["findings", "impression"]``); None keeps all text.
            A report with none of them falls back to the whole text.
        placeholder: replacement for "XXXX" de-identification placeholders ("" removes them; None keeps them).
        lowercase: lower-case the result.

    Returns:
        One line of text with single spaces; may be empty (callers decide whether that is an error).
    """
    if text is None:
        return ""
    text = str(text)
    if sections:
        found = extract_sections(text)
        kept = [found[name.lower()] for name in sections if found.get(name.lower())]
        text = " ".join(kept) if kept else text
    if placeholder is not None:
        text = _PLACEHOLDER.sub(placeholder, text)
    text = _NUMBERED.sub(" ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)  # "effusion ." left by a removed placeholder
    text = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", text)
    text = text.strip(" ,;")
    return text.lower() if lowercase else text


def has_report_text(text: str | None) -> bool:
    """Whether a report holds any words besides section headers and "XXXX" placeholders.

    The one rule for an empty report, shared by every bundle: ``""``, ``"   "``, ``"XXXX XXXX."`` and a header-only
    ``"FINDINGS: IMPRESSION:"`` are empty; ``"FINDINGS: Normal."`` is not.
    """
    if text is None:
        return False
    words = _PLACEHOLDER.sub(" ", _SECTION_HEADER.sub(" ", str(text)))
    return re.search(r"\w", words) is not None
