"""Load medical images through MONAI with the reader pinned and the traps of real files handled.

Readers are chosen by file type and never left to MONAI's fallback order, because readers disagree on real
data (see ../shared/data/README.md):

* DICOM: ``PydicomReader``. ITKReader inverts MONOCHROME1 but PydicomReader does not, so MONOCHROME1 is
  inverted here explicitly (``(2**BitsStored - 1) - x`` before rescale-free radiograph use); both readers
  return a 2D radiograph transposed, as (cols, rows), which is undone here so arrays read like the display
  (rows, cols) of ``pydicom.pixel_array`` and of a PNG; a trailing singleton depth axis is squeezed.
* PNG/JPG: ``PILReader(reverse_indexing=False)``, so (rows, cols) too. Greyscale stored as RGB is reduced
  to one channel.
* NIfTI and DICOM series (3D): ``NibabelReader`` / ``PydicomReader``; the two DICOM readers put slices in
  opposite z order, so 3D pipelines must set the orientation explicitly after loading (``Orientationd``).
  A DICOM folder's geometry is checked first (:func:`common.data.volume_checks.check_dicom_series`): every
  file readable, one orientation, unique InstanceNumbers, even slice steps.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Hashable, Iterator, Mapping

import pydicom
import torch
from common.data.image_checks import check_image_file
from common.data.volume_checks import check_dicom_series
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform

logger = logging.getLogger(__name__)

__all__ = ["LoadRadiograph", "LoadRadiographd", "LoadVolume", "LoadVolumed", "is_dicom_path", "describe_source"]

_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_dicom_path(path: Path) -> bool:
    """A DICOM file (``.dcm``, or a suffix-less file with the DICM preamble) or a folder of DICOM files."""
    if path.is_dir():
        return True
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix == "" or path.suffix.replace(".", "").isdigit():
        try:
            with open(path, "rb") as handle:
                handle.seek(128)
                return handle.read(4) == b"DICM"
        except OSError:
            return False
    return False


def describe_source(data: Mapping | None, key: str) -> str:
    """'row 12 of manifest.csv, field 'image'' when the dict carries manifest context, else the field alone."""
    if data and "row" in data and "manifest" in data:
        return f"row {data['row']} of {data['manifest']}, field '{key}'"
    return f"field '{key}'"


@contextmanager
def _reader_errors_named(path: Path, source: str, kind: str) -> Iterator[None]:
    """Re-raise whatever a reader throws on a corrupt file as a ValueError naming the file and the manifest field."""
    try:
        yield
    except FileNotFoundError:
        raise
    except Exception as err:  # readers raise many types on corrupt files; name the file whatever it was
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        try:  # say what is wrong with the file rather than MONAI's "install the reader libraries"
            check_image_file(path, source)
        except ValueError as clear:
            raise ValueError(f"could not read {kind} {path} ({source}): {clear}") from err
        except Exception:  # noqa: BLE001 - the check itself failed: report the reader's error
            pass
        raise ValueError(f"could not read {kind} {path} ({source}): {type(err).__name__}: {err}") from err


def _check_finite(array: torch.Tensor, path: Path, source: str, kind: str) -> None:
    if not torch.isfinite(array).all():
        raise ValueError(f"{kind} {path} ({source}) holds NaN or infinite values")


class LoadRadiograph:
    """Load a 2D radiograph (PNG/JPG or single-frame DICOM) as a float (1, H, W) MetaTensor in display orientation.

    Args:
        invert_monochrome1: invert MONOCHROME1 DICOM so that bone is bright as in MONOCHROME2.
        reduce_rgb: average an RGB/RGBA image to one channel (greyscale stored as RGB).
    """

    def __init__(self, invert_monochrome1: bool = True, reduce_rgb: bool = True) -> None:
        self.invert_monochrome1 = invert_monochrome1
        self.reduce_rgb = reduce_rgb
        self._png = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True, ensure_channel_first=True)
        self._dicom = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)

    def __call__(self, filename: str | Path, source: str = "image") -> MetaTensor:
        path = Path(filename)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path} ({source})")
        suffix = path.suffix.lower()
        with _reader_errors_named(path, source, "image"):
            if suffix in _PIL_SUFFIXES:
                image = self._load_pil(path)
            elif is_dicom_path(path) and path.is_file():
                image = self._load_dicom(path)
            else:
                raise ValueError(
                    f"unsupported radiograph file type '{suffix or path.name}' (PNG, JPG or DICOM expected)"
                )
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(
                f"image {path} ({source}) is not a 2D radiograph: loaded shape {tuple(image.shape)}, expected (1, H, W)"
            )
        _check_finite(image, path, source, "image")
        return image

    def _load_pil(self, path: Path) -> MetaTensor:
        image = self._png(str(path)).float()
        if image.shape[0] in (3, 4) and self.reduce_rgb:
            image = image[:3].mean(dim=0, keepdim=True)  # greyscale stored as RGB: one channel, same values
        return image

    def _load_dicom(self, path: Path) -> MetaTensor:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise ValueError(f"multi-frame DICOM ({frames} frames) is not a 2D radiograph")
        image = self._dicom(str(path)).float()
        if image.ndim == 4 and image.shape[-1] == 1:
            image = image[..., 0]  # the trailing singleton depth axis of a 2D DICOM
        image = image.transpose(-1, -2)  # readers return (cols, rows); display order is (rows, cols)
        if self.invert_monochrome1 and str(getattr(header, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            bits = int(getattr(header, "BitsStored", 8))
            slope = float(getattr(header, "RescaleSlope", 1) or 1)
            intercept = float(getattr(header, "RescaleIntercept", 0) or 0)
            max_value = (2**bits - 1) * slope + intercept
            image = max_value + intercept - image  # mirror the stored range so low values become dark
        return image


class LoadRadiographd(MapTransform):
    """Dictionary form of :class:`LoadRadiograph`; errors name the manifest row and field when the dict has them."""

    def __init__(
        self,
        keys: KeysCollection,
        invert_monochrome1: bool = True,
        reduce_rgb: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadRadiograph(invert_monochrome1=invert_monochrome1, reduce_rgb=reduce_rgb)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], source=describe_source(d, key))
        return d


class LoadVolume:
    """Load a 3D volume (NIfTI file, or DICOM series folder / file) as a float (1, X, Y, Z) MetaTensor.

    The reader is pinned by type (NibabelReader for NIfTI, PydicomReader for DICOM). Orientation is *not*
    changed here: pipelines set it explicitly with ``Orientationd`` right after loading.
    """

    def __init__(self) -> None:
        self._nifti = LoadImage(reader=NibabelReader(), image_only=True, ensure_channel_first=True)
        self._dicom = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)

    def __call__(self, filename: str | Path, source: str = "image") -> MetaTensor:
        path = Path(filename)
        if not path.exists():
            raise FileNotFoundError(f"volume not found: {path} ({source})")
        name = path.name.lower()
        slices = None
        with _reader_errors_named(path, source, "volume"):
            if name.endswith(_NIFTI_SUFFIXES):
                volume = self._nifti(str(path))
            elif is_dicom_path(path):
                slices = check_dicom_series(path, source) if path.is_dir() else None
                volume = self._dicom(str(path))
            else:
                raise ValueError(f"unsupported volume type '{path.name}' (NIfTI file or DICOM folder expected)")
        if volume.ndim != 4 or volume.shape[0] != 1:
            raise ValueError(
                f"volume {path} ({source}) has shape {tuple(volume.shape)}; expected (1, X, Y, Z) for a 3D image "
                "(a 4D file holds several volumes: save one volume per file)"
            )
        if slices is not None and volume.shape[-1] != slices:
            raise ValueError(
                f"DICOM series {path} ({source}) loaded {volume.shape[-1]} slices from {slices} readable files; "
                "re-export the series"
            )
        _check_finite(volume, path, source, "volume")
        return volume.float()


class LoadVolumed(MapTransform):
    """Dictionary form of :class:`LoadVolume`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], source=describe_source(d, key))
        return d
