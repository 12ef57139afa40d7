"""Build a bundle manifest from the CT-RATE release (Hamamci et al., arXiv 2403.17834; HF ibrahimhamamci/CT-RATE).

CT-RATE layout: ``dataset/<split folder>/<patient>/<patient>_<scan>/<patient>_<scan>_<recon>.nii.gz`` with
``<patient>`` like ``train_12385`` or ``valid_7``; reports in ``dataset/radiology_text_reports/*_reports.csv``
(``VolumeName``, ``Findings_EN``, ``Impressions_EN``); labels in ``dataset/multi_abnormality_labels/*.csv``
(``VolumeName`` + the 18 pathology columns). CT-CLIP trains on ``Findings_EN`` only.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from common.data.manifest import assign_patient_splits, write_manifest
from common.metrics.zero_shot import CT_RATE_PATHOLOGIES

logger = logging.getLogger(__name__)

__all__ = ["build_ct_rate_manifest", "ct_rate_relative_path"]

_EMPTY_REPORTS = {"", "not given.", "not given"}


def ct_rate_relative_path(volume_name: str, volumes_folder: str) -> str:
    """``train_12385_b_1.nii.gz`` -> ``<volumes_folder>/train_12385/train_12385_b/train_12385_b_1.nii.gz``."""
    stem = volume_name.removesuffix(".nii.gz")
    parts = stem.split("_")
    if len(parts) != 4:
        raise ValueError(
            f"VolumeName {volume_name!r} is not of the CT-RATE form <split>_<patient>_<scan>_<reconstruction>"
        )
    patient, scan = "_".join(parts[:2]), "_".join(parts[:3])
    return f"{volumes_folder}/{patient}/{scan}/{stem}.nii.gz"


def _read(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CT-RATE table not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: column(s) {missing} missing; columns are {reader.fieldnames}")
        return list(reader)


def build_ct_rate_manifest(
    dataset_dir: str | Path,
    reports_csv: str | Path,
    labels_csv: str | Path,
    out_path: str | Path,
    volumes_folder: str = "dataset/valid_fixed",
    split: str = "test",
    val_fraction: float = 0.0,
    class_names: Sequence[str] = CT_RATE_PATHOLOGIES,
    one_reconstruction_per_scan: bool = True,
    check_files: bool = True,
    seed: int = 0,
) -> Path:
    """Join reports and labels by ``VolumeName`` into a manifest (CSV/JSONL by suffix), written atomically.

    Args:
        dataset_dir: the CT-RATE root (image paths are written relative to it).
        reports_csv, labels_csv: the CT-RATE tables of one release split.
        out_path: manifest to write.
        volumes_folder: folder of the volumes, relative to ``dataset_dir``.
        split: the split given to every row; with ``val_fraction`` > 0 that fraction of the *patients* goes to
            ``val`` instead (threshold fitting and model selection held out from training).
        class_names: label columns to copy.
        one_reconstruction_per_scan: keep the first reconstruction of each scan (``_1``), as is usual for evaluation.
        check_files: every volume must exist (else an error listing up to 10 missing files).
    """
    dataset_dir = Path(dataset_dir)
    reports = {r["VolumeName"]: r for r in _read(Path(reports_csv), ["VolumeName", "Findings_EN"])}
    labels = _read(Path(labels_csv), ["VolumeName", *class_names])
    rows, missing_files, no_report = [], [], 0
    for number, entry in enumerate(labels, start=2):
        name = entry["VolumeName"]
        relative = ct_rate_relative_path(name, volumes_folder)
        if one_reconstruction_per_scan and not relative.endswith("_1.nii.gz"):
            continue
        report = reports.get(name)
        findings = (report or {}).get("Findings_EN", "").strip()
        if report is None or findings.lower() in _EMPTY_REPORTS:
            no_report += 1
            findings = ""
        if check_files and not (dataset_dir / relative).is_file():
            missing_files.append(relative)
        row = {"image": relative, "report": findings, "patient_id": "_".join(name.split("_")[:2])}
        for column in class_names:
            value = entry[column].strip()
            if value not in ("0", "1", "0.0", "1.0"):
                raise ValueError(f"{labels_csv}: line {number}: field '{column}' is {value!r}; expected 0 or 1")
            row[column] = int(float(value))
        rows.append(row)
    if missing_files:
        raise FileNotFoundError(
            f"{len(missing_files)} CT-RATE volume(s) missing under {dataset_dir}: {missing_files[:10]}"
        )
    if not rows:
        raise ValueError(f"no rows joined from {labels_csv} and {reports_csv}")
    fractions = {split: 1.0 - val_fraction, "val": val_fraction} if val_fraction > 0 else {split: 1.0}
    rows = assign_patient_splits(rows, fractions, seed=seed)
    if no_report:
        logger.warning("%d of %d volumes have no findings text (empty report)", no_report, len(rows))
    return write_manifest(rows, out_path)
