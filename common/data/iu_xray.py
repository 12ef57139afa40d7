"""Reader of the Indiana University chest X-ray collection (Open-i, ``NLMCXR_reports.tgz``) into manifest rows.

Demner-Fushman et al., "Preparing a collection of radiology examinations for distribution and retrieval",
JAMIA 2016. Each ``ecgen-radiology/<n>.xml`` holds the COMPARISON, INDICATION, FINDINGS and IMPRESSION sections as
``<AbstractText Label=...>``, MeSH ``<major>``/``<minor>`` terms and ``<parentImage id=...>`` links to the images
(``CXR1_1_IM-0001-3001.png`` in the image archive, which is distributed separately). The text is de-identified with
"XXXX" placeholders. The reports are CC BY-NC-ND 4.0: use them for research, do not redistribute edited copies.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from common.data.report_cleaning import clean_report

logger = logging.getLogger(__name__)

__all__ = ["iu_xray_manifest_rows", "parse_iu_xray_xml", "read_iu_xray_reports"]

_SECTIONS = ("comparison", "indication", "findings", "impression")


def parse_iu_xray_xml(content: bytes | str, source: str = "<xml>") -> dict[str, Any]:
    """Parse one IU X-ray report XML.

    Args:
        content: the XML document.
        source: file name used in error messages.

    Returns:
        ``{"id": "CXR1", "comparison", "indication", "findings", "impression": raw section text ("" when absent),
        "mesh_major": [...], "mesh_minor": [...], "image_ids": ["CXR1_1_IM-0001-3001", ...], "source": source}``.
    """
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as err:
        raise ValueError(f"{source}: not a readable IU X-ray report XML ({err})") from None
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError(f"{source}: no <uId id=...> element; not an IU X-ray (Open-i) report")
    report: dict[str, Any] = {"id": uid.get("id"), "source": source}
    for name in _SECTIONS:
        report[name] = ""
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in _SECTIONS:
            report[label] = " ".join((node.text or "").split())
    report["mesh_major"] = [n.text.strip() for n in root.iter("major") if n.text and n.text.strip()]
    report["mesh_minor"] = [n.text.strip() for n in root.iter("minor") if n.text and n.text.strip()]
    report["image_ids"] = [n.get("id") for n in root.findall("parentImage") if n.get("id")]
    return report


def _numeric_key(name: str) -> tuple[int, str]:
    match = re.search(r"(\d+)", Path(name).stem)
    return (int(match.group(1)) if match else -1, name)


def _iter_xml(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        files = sorted(path.rglob("*.xml"), key=lambda p: _numeric_key(p.name))
        if not files:
            raise FileNotFoundError(f"no *.xml report files under {path}")
        for file in files:
            yield str(file), file.read_bytes()
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:  # read members in memory: nothing is extracted to disk
            members = sorted(
                (m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")),
                key=lambda m: _numeric_key(m.name),
            )
            if not members:
                raise FileNotFoundError(f"no *.xml report files in archive {path}")
            for member in members:
                handle = archive.extractfile(member)
                if handle is not None:
                    yield f"{path}:{member.name}", handle.read()
    elif path.is_file():
        yield str(path), path.read_bytes()
    else:
        raise FileNotFoundError(
            f"IU X-ray reports not found at {path} (expected a folder of XML files, one XML or the .tgz)"
        )


def read_iu_xray_reports(path: str | Path) -> list[dict[str, Any]]:
    """All reports of a folder of ``<n>.xml`` files, one XML file, or ``NLMCXR_reports.tgz``; sorted by number."""
    return [parse_iu_xray_xml(content, source) for source, content in _iter_xml(Path(path))]


def iu_xray_manifest_rows(
    reports: Sequence[dict[str, Any]],
    sections: Sequence[str] = ("findings", "impression"),
    image_ext: str = ".png",
    image_prefix: str = "",
    placeholder: str | None = "",
    require_image: bool = True,
) -> list[dict[str, Any]]:
    """Turn parsed reports into manifest rows (one per study), skipping unusable ones with a warning and a count.

    Args:
        reports: output of :func:`read_iu_xray_reports`.
        sections: which sections form the report text, in order (R2Gen / R2GenGPT use findings + impression).
        image_ext: extension of the image files (the Open-i PNG archive: ``.png``).
        image_prefix: folder of the images relative to the dataset root (e.g. ``"images/"``).
        placeholder: replacement of the "XXXX" placeholders ("" removes them, None keeps them).
        require_image: skip studies that link no image.

    Returns:
        Rows with ``id``, ``image`` (the first linked image), ``images`` (all, ``;``-separated), ``report``,
        ``findings``, ``impression``, ``indication``, ``mesh_major`` (``;``-separated) and ``patient_id`` (the study
        id: the collection has one study per patient).
    """
    unknown = [s for s in sections if s.lower() not in _SECTIONS]
    if unknown:
        raise ValueError(f"unknown IU X-ray section(s) {unknown}; choose among {list(_SECTIONS)}")
    rows, no_text, no_image = [], 0, 0
    for report in reports:
        parts = [clean_report(report[s.lower()], placeholder=placeholder) for s in sections]
        text = " ".join(p for p in parts if p)
        if not text.strip():
            no_text += 1
            logger.warning("%s (%s): no text in sections %s; skipped", report["id"], report["source"], list(sections))
            continue
        if require_image and not report["image_ids"]:
            no_image += 1
            logger.warning("%s (%s): links no image; skipped", report["id"], report["source"])
            continue
        images = [f"{image_prefix}{image_id}{image_ext}" for image_id in report["image_ids"]]
        rows.append(
            {
                "id": report["id"],
                "image": images[0] if images else "",
                "images": ";".join(images),
                "report": text,
                "findings": clean_report(report["findings"], placeholder=placeholder),
                "impression": clean_report(report["impression"], placeholder=placeholder),
                "indication": clean_report(report["indication"], placeholder=placeholder),
                "mesh_major": ";".join(report["mesh_major"]),
                "patient_id": report["id"],
            }
        )
    if no_text or no_image:
        logger.warning(
            "IU X-ray: %d of %d studies skipped (%d without text in %s, %d without images)",
            no_text + no_image,
            len(reports),
            no_text,
            list(sections),
            no_image,
        )
    return rows
