"""Warnings that repeated every load or epoch are said once per run (common/log_noise.py)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import common  # noqa: F401 - installs the filters, as every bundle config's "$import common" does
from common import log_noise
from common.data.image_checks import check_image_file


def test_non_scalar_output_warning_is_shown_once_despite_catch_warnings_resets():
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's default: once per location, until a reset
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        log_noise.install()  # as `import common` does in a run
        for _ in range(3):
            with warnings.catch_warnings():  # what transformers and MONAI do on many calls: resets Python's record
                pass
            warnings.warn("ignoring non-scalar output in StatsHandler, make sure ... <class 'dict'>", stacklevel=1)
    assert len(shown) <= 1  # 3 without the record of our own


def _dicom_without_orientation(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_missing_dicom_orientation_is_said_once_and_monai_warning_is_quiet(tmp_path, caplog):
    from common.data.image_loading import LoadRadiograph

    files = [tmp_path / f"{i}.dcm" for i in range(3)]
    for file in files:
        _dicom_without_orientation(file)
    with caplog.at_level(logging.INFO, logger="common.data.image_checks"):
        for file in files:
            check_image_file(file)
    loader = LoadRadiograph()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # pytest's own filters are in front of ours; put ours back in front
        log_noise.install()
        for file in files * 2:  # two "epochs"
            loader(file)
    said = [r for r in caplog.records if "has no ImageOrientationPatient" in r.getMessage()]
    assert len(said) <= 1  # once per process (0 when an earlier test in this process said it)
    assert not [w for w in shown if "PydicomReader: ImageOrientationPatient" in str(w.message)]
