"""Study manifests (CSV or JSONL): one row per study, paths relative to ``dataset_dir``, patient-level splits.

Columns: ``image`` (path: DICOM file or folder, NIfTI, PNG/JPG), ``report`` (free text), label columns,
``patient_id`` and ``split`` (``train`` / ``val`` / ``test``). A bad row raises an error naming the file, the row
(1-based data row; the CSV header is not counted) and the field, or, with ``skip_bad_rows``, is skipped with one
warning line per row and a count at the end. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from common.data.atomic_io import atomic_path
from common.data.image_checks import check_image_file
from common.data.report_cleaning import has_report_text

logger = logging.getLogger(__name__)

__all__ = [
    "ManifestError",
    "read_manifest_rows",
    "load_manifest",
    "write_manifest",
    "assign_patient_splits",
    "SPLITS",
    "UNCERTAIN_LABEL_POLICIES",
    "rows_of_split",
]

SPLITS = ("train", "val", "test")
#: what a -1 (uncertain, as CheXpert and CT-RATE tables write it) in a binary label column becomes.
UNCERTAIN_LABEL_POLICIES = ("error", "ignore", "positive", "negative")


class _DropRow(Exception):
    """An uncertain label under ``uncertain_label_policy="ignore"``: the row is left out (counted, warned once)."""


class ManifestError(ValueError):
    """A manifest row that cannot be used; the message names file, row and field."""


def read_manifest_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read raw rows from a ``.csv`` (real CSV parser: quotes and newlines in reports are fine) or ``.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"manifest {path} must be .csv or .jsonl, got '{path.suffix}'")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is not part of the first column
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        bad = err.object[err.start : err.end]
        raise ManifestError(
            f"manifest {path} is not UTF-8 text: byte {err.start} (line {line}) is {bad!r}; "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8, or 'CSV UTF-8' in a spreadsheet)"
        ) from None
    if path.suffix.lower() == ".csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text, newline=""))]
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}: line {line_number} is not valid JSON: {err}") from err
    return rows


def _parse_label(value: Any, column: str, class_names: Sequence[str] | None) -> int | float:
    """A label cell as a number; class names map to their index; anything else is an error."""
    if class_names is not None:
        text = str(value).strip() if value is not None else ""
        if text in class_names:
            return list(class_names).index(text)
        if text.isdigit() and int(text) < len(class_names):  # a class index (CSV cells are strings)
            return int(text)
        raise ManifestError(
            f"unknown label value {value!r}; expected one of {list(class_names)} or an index below {len(class_names)}"
        )
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ManifestError("label is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"label value {value!r} is not a number (give class_names to map text labels)") from None
    if math.isnan(number):
        raise ManifestError("label is NaN")
    return int(number) if number.is_integer() else number


def _binary_label(value: int | float, policy: str) -> int:
    """0 / 1 as they are; -1 by ``policy``; anything else an error."""
    if value in (0, 1):
        return int(value)
    if value == -1 and policy != "error":
        if policy == "ignore":
            raise _DropRow
        return 1 if policy == "positive" else 0
    hint = (
        "; -1 marks an uncertain label (CheXpert, CT-RATE): set uncertain_label_policy to 'ignore' (drop the row), "
        "'positive' or 'negative'"
        if value == -1
        else ""
    )
    raise ManifestError(f"label value {value!r} is not 0 or 1 (a binary label column){hint}")


def _check_row(
    raw: Mapping[str, Any],
    dataset_dir: Path | None,
    label_columns: Sequence[str],
    class_names: Mapping[str, Sequence[str]],
    require_report: bool,
    image_key: str,
    check_files: bool,
    uncertain_label_policy: str | None = None,
) -> dict[str, Any]:
    """Validate and normalise one row; raises ManifestError('field ...: ...')."""
    row: dict[str, Any] = dict(raw)
    if image_key:
        image = str(raw.get(image_key) or "").strip()
        if not image:
            raise ManifestError(f"field '{image_key}': empty image path")
        path = Path(image)
        if not path.is_absolute() and dataset_dir is not None:
            path = Path(os.path.normpath(dataset_dir / path))
            if not path.is_relative_to(os.path.normpath(dataset_dir)):
                raise ManifestError(
                    f"field '{image_key}': relative path {image!r} leaves dataset_dir {dataset_dir}; relative paths "
                    "must stay inside dataset_dir (give an absolute path for a file stored elsewhere)"
                )
        if check_files and not path.exists():
            raise ManifestError(f"field '{image_key}': file not found: {path}")
        row[image_key] = str(path)
    if require_report or "report" in raw:
        report = raw.get("report")
        if require_report and not has_report_text(report):
            raise ManifestError(
                f"field 'report': empty report ({str(report or '')[:60]!r}: no words besides section headers and "
                "XXXX placeholders)"
            )
        row["report"] = "" if report is None else str(report)
    for column in label_columns:
        if column not in raw:
            raise ManifestError(f"field '{column}': label column missing")
        try:
            row[column] = _parse_label(raw[column], column, class_names.get(column))
            if uncertain_label_policy is not None:
                row[column] = _binary_label(row[column], uncertain_label_policy)
        except _DropRow:
            raise _DropRow(f"field '{column}': uncertain label -1 (uncertain_label_policy='ignore')") from None
        except ManifestError as err:
            raise ManifestError(f"field '{column}': {err}") from None
    split = str(raw.get("split") or "").strip().lower()
    if split and split not in SPLITS:
        raise ManifestError(f"field 'split': unknown split {split!r}; expected one of {SPLITS}")
    row["split"] = split
    row["patient_id"] = str(raw.get("patient_id") or "").strip()
    return row


def load_manifest(
    path: str | Path,
    dataset_dir: str | Path | None = None,
    split: str | Sequence[str] | None = None,
    label_columns: Sequence[str] | None = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
    require_report: bool = False,
    image_key: str = "image",
    check_files: bool = True,
    skip_bad_rows: bool = False,
    binary_labels: bool = False,
    uncertain_label_policy: str = "error",
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """Read, validate and filter a manifest.

    Args:
        path: the manifest; relative paths are taken against ``dataset_dir`` when not found as given.
        dataset_dir: root for relative image paths (default: the manifest's folder).
        split: keep only these split(s) (``"train"`` or ``["val", "test"]``); None keeps all.
        label_columns: columns that must hold a numeric label (or a class name, see ``class_names``).
        class_names: ``{column: [name0, name1, ...]}`` for text-valued labels; unknown values are errors.
        require_report: a report without words (empty, whitespace, only section headers or XXXX placeholders:
            :func:`common.data.report_cleaning.has_report_text`) is an error.
        image_key: the image path column ("" for text-only manifests).
        check_files: check that every image path exists. Relative paths must stay inside ``dataset_dir`` (a
            ``..`` that leaves it is an error); absolute paths are used as given.
        skip_bad_rows: warn once per bad row and skip it (with a count at the end) instead of raising.
        binary_labels: every label column is 0/1 (multi-label); other values are errors naming file, row, column
            and value, except -1 (uncertain) under ``uncertain_label_policy``.
        uncertain_label_policy: ``"error"`` (default), ``"ignore"`` (the row is left out, one warning per row and a
            count: a per-label mask would reach every loss and metric), ``"positive"`` (-1 -> 1) or
            ``"negative"`` (-1 -> 0), as the CheXpert paper's U-Ignore / U-Ones / U-Zeros.
        check_images: with ``check_files``, read every kept row's image up front
            (:func:`common.data.image_checks.check_image_file`: header and decode), so a corrupt file stops the run
            before training (or is skipped with ``skip_bad_rows``) instead of failing mid-epoch.

    Returns:
        Row dicts with absolute ``image`` paths, parsed labels, ``split``, ``patient_id``, and the context keys
        ``row`` (1-based) and ``manifest`` used in later error messages.
    """
    path = Path(path)
    if not path.is_file() and dataset_dir is not None:
        if not (Path(dataset_dir) / path).is_file():
            raise FileNotFoundError(
                f"manifest not found: {path} (nor {Path(dataset_dir) / path}); "
                "set dataset_dir and manifest to your data"
            )
        path = Path(dataset_dir) / path
    root = Path(dataset_dir) if dataset_dir else path.parent
    raw_rows = read_manifest_rows(path)
    if not raw_rows:
        raise ManifestError(f"manifest {path} has no rows")
    wanted = {split} if isinstance(split, str) else set(split) if split else None
    if wanted and not wanted <= set(SPLITS):
        raise ValueError(f"split must be among {SPLITS}, got {sorted(wanted)}")
    if uncertain_label_policy not in UNCERTAIN_LABEL_POLICIES:
        raise ValueError(
            f"uncertain_label_policy must be one of {UNCERTAIN_LABEL_POLICIES}, got {uncertain_label_policy!r}"
        )
    policy = uncertain_label_policy if binary_labels else None
    label_columns = list(label_columns or [])
    missing_columns = [c for c in label_columns if c not in raw_rows[0]]
    if missing_columns:
        raise ManifestError(f"{path}: label column(s) {missing_columns} missing; columns are {list(raw_rows[0])}")
    needed = [c for c in ([image_key] if image_key else []) + (["report"] if require_report else []) if c]
    absent = [c for c in needed if all(c not in raw for raw in raw_rows)]
    if absent:
        raise ManifestError(
            f"{path}: column(s) {absent} missing; columns are {list(raw_rows[0])}: add them (or rename yours)"
        )
    rows, every, bad, uncertain = [], [], 0, 0  # every: all valid rows, for the patient check across splits
    for number, raw in enumerate(raw_rows, start=1):
        try:
            row = _check_row(
                raw, root, label_columns, class_names or {}, require_report, image_key, check_files, policy
            )
            row["row"] = number
            every.append(row)
            if wanted is not None and row["split"] not in wanted:
                continue
            if image_key and check_files and check_images:
                _check_image(row[image_key], image_key)
        except _DropRow as reason:
            logger.warning("leaving out row: %s: row %d: %s", path, number, reason)
            uncertain += 1
            continue
        except ManifestError as err:
            message = f"{path}: row {number}: {err}"
            if not skip_bad_rows:
                raise ManifestError(message) from None
            logger.warning("skipping bad row: %s", message)
            bad += 1
            continue
        row["row"], row["manifest"] = number, str(path)
        rows.append(row)
    if bad:
        logger.warning("%s: skipped %d bad row(s) of %d", path, bad, len(raw_rows))
    if uncertain:
        logger.warning("%s: left out %d row(s) of %d with an uncertain (-1) label", path, uncertain, len(raw_rows))
    _warn_duplicates(raw_rows, path)
    if "patient_id" not in raw_rows[0] and any(row["split"] for row in rows):
        logger.warning(
            "%s has no 'patient_id' column: the check that no patient is in two splits is off; add the column "
            "to have it (splits should be patient-level)",
            path,
        )
    _check_patient_leak(every, path)  # across all splits, also when only one split is read
    if not rows:
        raise ManifestError(f"{path}: no rows left for split {sorted(wanted) if wanted else 'any'}")
    return rows


def _check_image(path: str, image_key: str) -> None:
    """The row's image file reads (header and decode); any failure is a ManifestError naming the field."""
    try:
        check_image_file(path, source=f"field '{image_key}'")
    except (ValueError, FileNotFoundError) as err:
        raise ManifestError(f"field '{image_key}': {err}") from None


def _warn_duplicates(raw_rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One warning naming the rows that repeat an earlier row field for field (each would count twice)."""
    first: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for number, raw in enumerate(raw_rows, start=1):
        key = json.dumps(raw, sort_keys=True, default=str)
        if key in first:
            repeats.append((number, first[key]))
        else:
            first[key] = number
    if repeats:
        listing = ", ".join(f"row {n} = row {m}" for n, m in repeats[:10]) + (", ..." if len(repeats) > 10 else "")
        logger.warning(
            "%s: %d row(s) repeat an earlier row exactly (%s); each copy is used again in training and metrics: "
            "remove the duplicates",
            path,
            len(repeats),
            listing,
        )


def rows_of_split(rows: Sequence[Mapping[str, Any]], split: str, min_rows: int = 1) -> list[dict[str, Any]]:
    """The rows of ``split``; fewer than ``min_rows`` is an error naming the manifest and the split counts.

    Raises:
        ManifestError: before a run trains on nothing (``num_samples=0`` deep in a DataLoader otherwise).
    """
    chosen = [dict(row) for row in rows if row.get("split") == split]
    if len(chosen) < min_rows:
        manifests = sorted({str(row.get("manifest", "?")) for row in rows}) or ["<no rows>"]
        counts = {name: sum(1 for row in rows if row.get("split") == name) for name in SPLITS}
        unset = sum(1 for row in rows if not row.get("split"))
        raise ManifestError(
            f"{', '.join(manifests)}: split {split!r} has {len(chosen)} row(s), at least {min_rows} needed "
            f"(rows per split: {counts}, without a split: {unset}); fill the 'split' column "
            "(common.data.manifest.assign_patient_splits does it by patient)"
        )
    return chosen


def _check_patient_leak(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """A patient whose studies sit in two splits leaks information between them: an error."""
    seen: dict[str, str] = {}
    for row in rows:
        patient, split = row.get("patient_id"), row.get("split")
        if not patient or not split:
            continue
        if seen.setdefault(patient, split) != split:
            raise ManifestError(
                f"{path}: row {row.get('row')}: field 'split': patient {patient!r} is in both {seen[patient]!r} and "
                f"{split!r}; splits must be patient-level"
            )


def assign_patient_splits(
    rows: Sequence[dict[str, Any]], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Give every row a ``split`` by a stable hash of its ``patient_id`` (all studies of a patient together).

    Hashing, rather than shuffling, keeps a patient's split unchanged when rows are added to the manifest.
    """
    fractions = dict(fractions or {"train": 0.7, "val": 0.15, "test": 0.15})
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum above 0, got {fractions}")
    bounds, acc = [], 0.0
    for name, fraction in fractions.items():
        acc += fraction / total
        bounds.append((acc, name))
    out = []
    for row in rows:
        patient = str(row.get("patient_id") or "")
        if not patient:
            raise ManifestError(f"row {row.get('row', '?')}: field 'patient_id' is empty; patient-level splits need it")
        digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        split = next(name for bound, name in bounds if u < bound or bound == bounds[-1][0])
        out.append({**row, "split": split})
    return out


def write_manifest(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write rows as CSV or JSONL (by suffix), atomically: a partial file never replaces a good one."""
    path = Path(path)
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"manifest {path} must be .csv or .jsonl")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                handle.write(json.dumps({c: row.get(c) for c in columns}) + "\n")
    return path
