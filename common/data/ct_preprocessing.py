"""CT-CLIP preprocessing as MONAI dictionary transforms: HU, orientation, spacing, intensity, crop/pad, axis order.

The official CT-CLIP pipeline (``scripts/data_inference_nii.py``, ``data.py``; arXiv 2403.17834) reads a NIfTI,
applies ``RescaleSlope``/``RescaleIntercept`` from a metadata CSV, resamples to 0.75 x 0.75 x 1.5 mm with
``F.interpolate(trilinear, align_corners=False)`` to ``int(size * old / new)`` voxels, clips HU to
[-1000, 1000] and divides by 1000, centre-crops or pads (value -1) to 480 x 480 x 240, and returns
``(1, 240, 480, 480)`` = (channel, slices S, rows L, columns P).

Here: the orientation is set explicitly (``Orientationd("LPS")``, CT-RATE's native layout, so that any input
orientation gives the official array layout), the HU rescale is skipped when the data are already in HU
(CT-RATE v2 ``*_fixed`` volumes are, and the official code rescales them twice), DICOM folders holding several
series are refused, and the resampling is MONAI ``Spacingd`` by default or the official one
(:class:`OfficialResampled`) on request.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from common.data.image_loading import LoadVolumed, is_dicom_path
from common.data.volume_checks import CheckCTContentd
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    Resize,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    Transposed,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CT_CLIP_PIXDIM",
    "CT_CLIP_SPATIAL_SIZE",
    "NIFTI_AXIS_LABELS",
    "CheckDicomSeriesd",
    "OfficialResampled",
    "RescaleHUd",
    "check_preprocessed",
    "ct_clip_transforms",
    "looks_like_hu",
    "read_rescale_metadata",
]

CT_CLIP_PIXDIM: tuple[float, float, float] = (0.75, 0.75, 1.5)
CT_CLIP_SPATIAL_SIZE: tuple[int, int, int] = (480, 480, 240)
HU_MODES = ("auto", "rescale", "skip")
#: nibabel's axis-code convention (axcodes name where each array axis points), pinned rather than taken from meta.
NIFTI_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def read_rescale_metadata(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{volume name: (slope, intercept)}`` from a CT-RATE metadata CSV (``VolumeName``, ``RescaleSlope``,
    ``RescaleIntercept``). Volume names are matched without their ``.nii``/``.nii.gz`` suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HU metadata CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"VolumeName", "RescaleSlope", "RescaleIntercept"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: column(s) {sorted(missing)} missing; columns are {reader.fieldnames}")
        table = {}
        for number, row in enumerate(reader, start=2):
            try:
                table[_volume_stem(row["VolumeName"])] = (float(row["RescaleSlope"]), float(row["RescaleIntercept"]))
            except ValueError:
                raise ValueError(
                    f"{path}: line {number}: RescaleSlope/RescaleIntercept are not numbers: {row}"
                ) from None
    return table


def _volume_stem(name: str) -> str:
    name = Path(str(name)).name
    for suffix in (".nii.gz", ".nii", ".npz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def looks_like_hu(volume: torch.Tensor, air_fraction: float = 0.02) -> bool:
    """True when at least ``air_fraction`` of the voxels lie in [-1100, -900], the HU of air.

    Stored CT values before rescaling (intercept about -1024) put air near 0, so they fail this test; chest CT
    in HU has air outside the body and in the lungs, well above 2 % of the voxels.
    """
    values = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
    air = ((values > -1100) & (values < -900)).float().mean().item()
    return air >= air_fraction


class CheckDicomSeriesd(MapTransform):
    """Refuse a DICOM folder that holds more than one series (named error listing the SeriesInstanceUIDs)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        import pydicom

        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(str(d[key]))
            if not path.is_dir() or not is_dicom_path(path):
                continue
            series: dict[str, int] = {}
            for file in sorted(p for p in path.iterdir() if p.is_file()):
                try:
                    header = pydicom.dcmread(str(file), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                    uid = str(header.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
                except Exception as err:  # noqa: BLE001 - non-DICOM files in the folder are the reader's business
                    logger.debug("skipping %s while counting series: %s", file, err)
                    continue
                series[uid] = series.get(uid, 0) + 1
            if len(series) > 1:
                listing = ", ".join(f"{uid} ({n} files)" for uid, n in sorted(series.items()))
                raise ValueError(
                    f"DICOM folder {path} ({key}) holds {len(series)} series: {listing}; expected one series per folder"
                )
        return d


class RescaleHUd(MapTransform):
    """Stored values -> Hounsfield units with slope/intercept from a metadata CSV, unless already in HU.

    Args:
        keys: image keys (loaded MetaTensors; the volume name comes from ``meta["filename_or_obj"]``).
        metadata_csv: CT-RATE metadata CSV; empty: no rescale (the data are taken as HU).
        hu_mode: ``"auto"`` rescales unless :func:`looks_like_hu` says the data are HU already (logged);
            ``"rescale"`` always applies the CSV (the official behaviour, wrong for CT-RATE v2);
            ``"skip"`` never rescales.
        require_entry: a volume missing from the CSV is an error (else it is taken as HU, with a warning).
    """

    def __init__(
        self,
        keys: KeysCollection,
        metadata_csv: str | Path | None = None,
        hu_mode: str = "auto",
        require_entry: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if hu_mode not in HU_MODES:
            raise ValueError(f"hu_mode must be one of {HU_MODES}, got {hu_mode!r}")
        self.table = read_rescale_metadata(metadata_csv) if metadata_csv else {}
        self.hu_mode = hu_mode
        self.require_entry = require_entry
        self.metadata_csv = metadata_csv
        self._said_hu = False

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if not self.table or self.hu_mode == "skip":
                continue
            volume = d[key]
            source = str(volume.meta.get("filename_or_obj", key)) if isinstance(volume, MetaTensor) else str(key)
            entry = self.table.get(_volume_stem(source))
            if entry is None:
                if self.require_entry:
                    raise ValueError(
                        f"volume {source} ({key}) has no RescaleSlope/RescaleIntercept row in {self.metadata_csv}"
                    )
                logger.warning("no HU rescale entry for %s in %s: taken as HU", source, self.metadata_csv)
                continue
            if self.hu_mode == "auto" and looks_like_hu(volume):
                if not self._said_hu:  # once per process: one line per volume buried the rest of the log
                    logger.info(
                        "%s is already in HU (air at -1000): slope/intercept not applied again (further volumes "
                        "already in HU are not logged)",
                        source,
                    )
                    self._said_hu = True
                continue
            slope, intercept = entry
            d[key] = volume * slope + intercept
        return d


class OfficialResampled(MapTransform):
    """CT-CLIP's resampling: ``F.interpolate(trilinear, align_corners=False)`` to ``int(n * old / new)`` voxels.

    Reproduces the official arrays exactly (MONAI ``Resize`` calls the same interpolation); the affine is
    updated by ``Resize``. Use after ``Orientationd`` so the spacing order matches the axes.
    """

    def __init__(
        self, keys: KeysCollection, pixdim: Sequence[float] = CT_CLIP_PIXDIM, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pixdim = tuple(float(p) for p in pixdim)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if not isinstance(volume, MetaTensor):
                raise TypeError(
                    f"{key}: OfficialResampled needs a MetaTensor with an affine (load it with LoadVolumed)"
                )
            # NIfTI headers hold float32 (0.9 -> 0.89999998); CT-RATE's CSV holds the decimal the official code used
            spacing = [round(float(s), 5) for s in volume.pixdim[:3]]
            size = [int(n * old / new) for n, old, new in zip(volume.shape[1:], spacing, self.pixdim)]
            d[key] = Resize(spatial_size=size, mode="trilinear", align_corners=False, anti_aliasing=False)(volume)
        return d


def ct_clip_transforms(
    keys: KeysCollection = ("image",),
    metadata_csv: str | Path | None = None,
    hu_mode: str = "auto",
    resampling: str = "monai",
    pixdim: Sequence[float] = CT_CLIP_PIXDIM,
    spatial_size: Sequence[int] = CT_CLIP_SPATIAL_SIZE,
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    load: bool = True,
    check_content: bool = True,
) -> Compose:
    """The whole CT-CLIP pipeline for a NIfTI file or DICOM folder path -> (1, D, H, W) float in [-1, 1].

    ``spatial_size`` is (H, W, D) in the LPS array order before the final transpose, as in the official code.
    The bundles spell the same list out in their configs; this function serves tests and scripts.
    ``check_content=False`` drops :class:`~common.data.volume_checks.CheckCTContentd` (only to reproduce the
    official double HU rescale, whose output is not CT).
    """
    if resampling not in ("monai", "official"):
        raise ValueError(f"resampling must be 'monai' or 'official', got {resampling!r}")
    keys = [keys] if isinstance(keys, str) else list(keys)
    steps: list = [CheckDicomSeriesd(keys), LoadVolumed(keys)] if load else []
    steps += [
        RescaleHUd(keys, metadata_csv=metadata_csv, hu_mode=hu_mode),
        *([CheckCTContentd(keys)] if check_content else []),
        Orientationd(keys, axcodes="LPS", labels=NIFTI_AXIS_LABELS),
        OfficialResampled(keys, pixdim) if resampling == "official" else Spacingd(keys, pixdim=pixdim, mode="bilinear"),
        ScaleIntensityRanged(keys, a_min=hu_range[0], a_max=hu_range[1], b_min=-1.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys, spatial_size=spatial_size, mode="constant", constant_values=-1.0),
        Transposed(keys, indices=(0, 3, 1, 2)),  # (1, L, P, S) -> (1, S, L, P): slices first, as CTViT expects
    ]
    return Compose(steps)


def check_preprocessed(
    volume: torch.Tensor, spatial_size: Sequence[int] = CT_CLIP_SPATIAL_SIZE, source: str = "image"
) -> None:
    """Raise ``ValueError`` unless ``volume`` is (1, D, H, W), finite, within [-1, 1].

    D, H, W = ``spatial_size[2], spatial_size[0], spatial_size[1]``.
    """
    expected = (1, spatial_size[2], spatial_size[0], spatial_size[1])
    if tuple(volume.shape) != expected:
        raise ValueError(f"{source}: preprocessed volume has shape {tuple(volume.shape)}, expected {expected}")
    arr = np.asarray(volume)
    if not np.isfinite(arr).all() or arr.min() < -1 - 1e-6 or arr.max() > 1 + 1e-6:
        raise ValueError(f"{source}: preprocessed values must be finite within [-1, 1]")
