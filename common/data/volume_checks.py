"""Refuse broken CT before it trains: DICOM series geometry before loading, volume content after.

MONAI's ``PydicomReader`` stacks every file of a folder that carries the DICM preamble in ``InstanceNumber``
order, skips an unreadable slice with a warning and does not look at the geometry, so two series with blank
``SeriesInstanceUID`` in one folder load as one interleaved volume and a series with one bad slice loads with a
slice missing. ``nibabel`` loads a ``.nii.gz`` cut short after its header at full shape, the missing data as
zeros. The checks here turn each of those into a ``ValueError`` naming the file and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

logger = logging.getLogger(__name__)

__all__ = ["CheckCTContentd", "check_ct_content", "check_dicom_series", "check_pixel_data"]

_REEXPORT = "re-export the series, or move each series into its own folder"


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_pixel_data(ds: pydicom.Dataset) -> None:
    """Uncompressed: the pixel bytes are all there (cheap); compressed: they decode. Raises on a truncated slice."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        ds.pixel_array  # noqa: B018 - decode: the only check of a compressed slice
        return
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    expected = ds.Rows * ds.Columns * int(getattr(ds, "SamplesPerPixel", 1)) * (ds.BitsAllocated // 8) * frames
    if len(ds.PixelData) < expected:
        raise ValueError(f"pixel data holds {len(ds.PixelData)} bytes, {expected} expected: the file is truncated")


def _read_slice(file: Path, folder: Path, source: str) -> pydicom.Dataset:
    """Header and decoded pixels of one slice; any failure names the file."""
    try:
        ds = pydicom.dcmread(str(file))
        check_pixel_data(ds)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise ValueError(
            f"DICOM series {folder} ({source}): file {file.name} is not a readable DICOM slice "
            f"({type(err).__name__}: {err}); remove it from the folder if it is not part of the series, "
            f"else {_REEXPORT}"
        ) from err
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"):
        if getattr(ds, tag, None) in (None, ""):
            raise ValueError(
                f"DICOM series {folder} ({source}): file {file.name} has no {tag}, so the slice order cannot be "
                f"checked; {_REEXPORT} with full geometry tags, or convert it to NIfTI"
            )
    return ds


def check_dicom_series(folder: str | Path, source: str = "image", spacing_tolerance: float = 0.05) -> int:
    """Check that a DICOM folder is one evenly spaced stack of readable slices; return the slice count.

    Checks every file decodes, one orientation and one slice size, unique ``InstanceNumber`` (the order
    MONAI stacks in), and that in that order the slice positions along the slice normal move one way with
    a step equal to the median step within ``spacing_tolerance`` (relative, plus 0.01 mm): a gap, a
    duplicate position or two interleaved series fails.

    Args:
        folder: the series folder.
        source: the manifest row and field, for the message.
        spacing_tolerance: allowed relative deviation of each slice step from the median step.

    Raises:
        ValueError: naming the folder, the offending file(s) and what to do.
    """
    folder = Path(folder)
    files = _series_files(folder)
    if not files:
        raise ValueError(f"DICOM series folder {folder} ({source}) holds no files")
    slices = [(file, _read_slice(file, folder, source)) for file in files]
    if len(slices) == 1:
        return 1
    first_file, first = slices[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    for file, ds in slices[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), orientation, atol=1e-4):
            raise ValueError(
                f"DICOM series {folder} ({source}): {file.name} has ImageOrientationPatient "
                f"{list(ds.ImageOrientationPatient)}, {first_file.name} has {list(orientation)}: two series in one "
                f"folder; {_REEXPORT}"
            )
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise ValueError(
                f"DICOM series {folder} ({source}): {file.name} is {ds.Rows}x{ds.Columns}, {first_file.name} is "
                f"{first.Rows}x{first.Columns}: two series in one folder; {_REEXPORT}"
            )
    by_number: dict[int, Path] = {}
    for file, ds in slices:
        number = int(ds.InstanceNumber)
        if number in by_number:
            raise ValueError(
                f"DICOM series {folder} ({source}): {by_number[number].name} and {file.name} share InstanceNumber "
                f"{number}: two series in one folder (their SeriesInstanceUID may be blank); {_REEXPORT}"
            )
        by_number[number] = file
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(slices, key=lambda item: int(item[1].InstanceNumber))
    z = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for _, ds in ordered])
    steps = np.diff(z)
    median = float(np.median(np.abs(steps)))
    for i, step in enumerate(steps):
        a, b = ordered[i][0].name, ordered[i + 1][0].name
        if abs(step) < 1e-3:
            raise ValueError(
                f"DICOM series {folder} ({source}): {a} and {b} lie at the same position {z[i]:.3f} mm: duplicate "
                f"slices or two series in one folder; {_REEXPORT}"
            )
        if np.sign(step) != np.sign(steps[0]) or abs(abs(step) - median) > spacing_tolerance * median + 0.01:
            raise ValueError(
                f"DICOM series {folder} ({source}): slice step {step:+.3f} mm between {a} and {b} differs from the "
                f"series' {median:.3f} mm (in InstanceNumber order): a missing slice, or two interleaved series; "
                f"{_REEXPORT}"
            )
    return len(slices)


def check_ct_content(
    volume: torch.Tensor,
    source: str = "image",
    hu_window: Sequence[float] = (-1100.0, 3100.0),
    min_fraction_in_window: float = 0.5,
    max_single_value_fraction: float = 0.95,
) -> None:
    """Refuse a volume that cannot be a CT in Hounsfield units: (nearly) constant, or mostly outside ``hu_window``.

    A ``.nii.gz`` cut short loads with the missing voxels 0; a series exported normalised to [0, 1] is constant
    to within the check's resolution; stored values without their rescale are far from air at -1000.

    Args:
        volume: (C, X, Y, Z) values after the HU rescale.
        source: file and manifest row, for the message.
        hu_window: the CT range; at least ``min_fraction_in_window`` of the voxels must lie inside.
        max_single_value_fraction: a volume where more voxels than this share one value is refused.
    """
    values = torch.as_tensor(volume).detach().reshape(-1)
    if values.numel() > 4_000_000:  # a strided sample keeps the check cheap on 512^3 volumes
        values = values[:: values.numel() // 4_000_000 + 1]
    values = values.float()
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise ValueError(
            f"volume {source} is constant ({low:g} everywhere): a truncated or empty file; re-export or re-download it"
        )
    _, counts = torch.unique(values, return_counts=True)
    top = float(counts.max()) / values.numel()
    if top > max_single_value_fraction:
        raise ValueError(
            f"volume {source}: {top:.1%} of the voxels share one value (more than {max_single_value_fraction:.0%}): "
            "a truncated file whose missing data read as zeros, or a mask; re-export or re-download it"
        )
    inside = ((values >= hu_window[0]) & (values <= hu_window[1])).float().mean().item()
    if inside < min_fraction_in_window:
        raise ValueError(
            f"volume {source}: only {inside:.1%} of the voxels lie in the CT range {list(hu_window)} HU "
            f"(at least {min_fraction_in_window:.0%} expected; values span {low:g}..{high:g}): not Hounsfield units; "
            "set hu_metadata_csv / hu_mode so that the rescale is applied, or check the file"
        )


class CheckCTContentd(MapTransform):
    """Dictionary form of :func:`check_ct_content`, placed after the HU rescale; the message names the file."""

    def __init__(
        self,
        keys: KeysCollection,
        hu_window: Sequence[float] = (-1100.0, 3100.0),
        min_fraction_in_window: float = 0.5,
        max_single_value_fraction: float = 0.95,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.kwargs = {
            "hu_window": tuple(hu_window),
            "min_fraction_in_window": min_fraction_in_window,
            "max_single_value_fraction": max_single_value_fraction,
        }

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            meta = getattr(volume, "meta", {})
            name = str(meta.get("filename_or_obj", key))
            where = (
                f"{name} (row {d['row']} of {d['manifest']}, field '{key}')" if "row" in d and "manifest" in d else name
            )
            check_ct_content(volume, where, **self.kwargs)
        return d
