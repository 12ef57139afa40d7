"""Checks of what a user gives ctclip_lora's zero-shot evaluation and inference: pathology names, input volumes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["check_input_files", "check_pathology_names"]


def check_pathology_names(names: Sequence[str]) -> list[str]:
    """Any non-empty, distinct names are valid (open vocabulary); blanks and duplicates are errors."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError("class_names is empty: give the pathology names to score")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ValueError(f"class_names has blank pathology name(s) at position(s) {blank}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class_names repeats {duplicates}")
    return names


def check_input_files(paths: Sequence[str]) -> list[str]:
    """Inference inputs: a non-empty list of existing NIfTI files or DICOM folders."""
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    if not paths:
        raise ValueError(
            "input_files is empty: pass NIfTI files or DICOM folders, e.g. --input_files \"['/data/ct.nii.gz']\""
        )
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"input_files not found: {missing}")
    return [str(p) for p in paths]
