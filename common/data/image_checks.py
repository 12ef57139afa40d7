"""Check a manifest row's image file up front, cheaply (header and decode), before any training reads it.

A corrupt file found by the DataLoader stops a run mid-epoch (after a full validation pass, in the worst case) and
MONAI wraps the reader's error so the skip logic cannot tell it from a bug. :func:`check_image_file` reads each file
once when the manifest is loaded, so a bad row stops the run before training, naming the file, row and field, or is
skipped with ``skip_bad_rows``. What is read, by type:

* PNG: every chunk and its CRC (``PIL.Image.verify``), so a truncated or overwritten file fails; JPEG/BMP/TIFF: a
  full decode. A file whose bytes are not an image (a text or HTML page saved as ``.png``) is named as such.
* DICOM file: the whole dataset, and its pixel data are all there (uncompressed) or decode (compressed).
* DICOM folder: :func:`common.data.volume_checks.check_dicom_series` (every slice readable, one geometry).
* NIfTI: the header (3D, or 4D with one volume), and all the voxel bytes are present: the gzip trailer's size field
  is compared with the header's (a file cut short fails without decompressing it; a mismatch is confirmed by one
  streaming pass).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from common.data.volume_checks import check_dicom_series, check_pixel_data
from PIL import Image, UnidentifiedImageError

__all__ = ["check_image_file"]

logger = logging.getLogger(__name__)
_noted = {"orientation": False}

_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_REPLACE = "replace the file (re-export or re-download it), or remove the row (or set skip_bad_rows true)"


def _starts_with(path: Path, offset: int, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(len(magic)) == magic


def _check_pil(path: Path) -> None:
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()  # every chunk and CRC: truncation or overwritten bytes fail
            else:
                image.load()
    except UnidentifiedImageError:
        if _starts_with(path, 128, b"DICM"):
            raise ValueError(f"{path} is a DICOM file named '{path.suffix}': rename it to .dcm") from None
        with open(path, "rb") as handle:
            head = handle.read(64)
        if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*", b"MM\x00*")):
            raise ValueError(f"{path} is a damaged image file (its header is unreadable); {_REPLACE}") from None
        looks_like_text = bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        what = (
            "text, not an image (an error page or a pointer file saved under an image name?)"
            if looks_like_text
            else ("not an image format PIL can read")
        )
        raise ValueError(f"{path} is {what}; {_REPLACE}") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated data, bad CRC, broken chunk
        raise ValueError(f"{path} is a damaged {path.suffix.lstrip('.').upper()} file ({err}); {_REPLACE}") from None


def _check_dicom_file(path: Path) -> None:
    try:
        ds = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError:
        raise ValueError(f"{path} is not a DICOM file (no DICM preamble or DICOM header); {_REPLACE}") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on a cut file
        raise ValueError(f"{path} is a damaged DICOM file ({type(err).__name__}: {err}); {_REPLACE}") from None
    if not ("ImageOrientationPatient" in ds and "ImagePositionPatient" in ds) and not _noted["orientation"]:
        _noted["orientation"] = True  # once per run: MONAI's PydicomReader warned on every load (common/log_noise.py)
        logger.info(
            "%s (and maybe other DICOM files) has no ImageOrientationPatient/ImagePositionPatient: read as a 2D image "
            "in stored row/column order, the affine being the identity; this is said once",
            path,
        )
    if "PixelData" not in ds:
        raise ValueError(f"{path} is a DICOM file without pixel data (a report or structured document?); {_REPLACE}")
    try:
        check_pixel_data(ds)
    except Exception as err:  # noqa: BLE001 - a decoder error or our truncation check
        raise ValueError(f"{path}: DICOM pixel data unreadable ({type(err).__name__}: {err}); {_REPLACE}") from None


def _gzip_size(path: Path) -> int:
    """Uncompressed size of a gzip file, by one streaming pass; a cut stream raises EOFError."""
    size = 0
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            size += len(chunk)
    return size


def _check_nifti(path: Path) -> None:
    try:
        image = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises several types on a bad header
        raise ValueError(f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}); {_REPLACE}") from None
    shape = tuple(int(s) for s in image.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ValueError(
            f"{path} is a {len(shape)}D image of shape {shape}; a 3D volume (X, Y, Z) is expected: save one volume "
            "per file (a 4D series holds one volume per time point or echo)"
        )
    header = image.header
    expected = int(header.get_data_offset()) + int(np.prod(shape)) * np.dtype(header.get_data_dtype()).itemsize
    if str(path).lower().endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            trailer = int.from_bytes(handle.read(4), "little")
        if trailer != expected % 2**32:
            try:
                actual = _gzip_size(path)
            except (EOFError, OSError, gzip.BadGzipFile) as err:
                raise ValueError(
                    f"{path} is cut short ({type(err).__name__}: {err}): the header promises {shape} voxels; {_REPLACE}"
                ) from None
            if actual < expected:
                raise ValueError(f"{path} holds {actual} bytes, its header needs {expected}: cut short; {_REPLACE}")
    elif path.stat().st_size < expected:
        raise ValueError(
            f"{path} holds {path.stat().st_size} bytes, its header needs {expected}: cut short; {_REPLACE}"
        )


def _check_npy(path: Path) -> None:
    """A ``.npy`` header and a file long enough for it (mapped, not read); object arrays (pickles) are refused."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array ({err}); {_REPLACE}") from None
    if array.size == 0:
        raise ValueError(f"{path} is an empty array of shape {tuple(array.shape)}; {_REPLACE}")


def check_image_file(path: str | Path, source: str = "image") -> None:
    """Read ``path`` cheaply and raise if a loader would fail on it or load it wrong.

    Args:
        path: a PNG/JPG/BMP/TIFF, a DICOM file or series folder, a NIfTI file, or a ``.npy`` array.
        source: the manifest row and field, for messages of the series check.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not what its name says, is damaged or cut short, or (NIfTI) is not 3D; the message
            names the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    name = path.name.lower()
    if path.is_dir():
        check_dicom_series(path, source)
    elif name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif path.suffix.lower() in _PIL_SUFFIXES:
        _check_pil(path)
    elif path.suffix.lower() == ".dcm" or _starts_with(path, 128, b"DICM"):
        _check_dicom_file(path)
    elif path.suffix.lower() == ".npy":  # an array already preprocessed (MONAI's NumpyReader)
        _check_npy(path)
    else:
        raise ValueError(
            f"{path}: unsupported image type '{path.suffix or path.name}' (PNG, JPG, BMP, TIFF, DICOM file or "
            "folder, NIfTI or .npy expected)"
        )
