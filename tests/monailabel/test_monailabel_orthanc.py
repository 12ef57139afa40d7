"""The chain a hospital team runs: Orthanc (DICOMweb) holds the real DICOM studies, the MONAI Label app serves the
bundles from it, OHIF shows the study. Everything runs inside a private network namespace that has only loopback.

The real CT series has blank Study/Series/SOP Instance UIDs (Orthanc refuses it) and JPEG 2000 pixels (Orthanc's
WADO retrieve cannot transcode them): the test writes a temporary copy with UIDs filled in and pixels decompressed,
never a changed file in the shared data. The CR instance is decompressed the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from serving import assert_neighbours_equal, assert_probabilities_equal, cli_output, run_chain, server_conf

pytestmark = [pytest.mark.slow, pytest.mark.monailabel]

PLUGINS = "/usr/share/orthanc/plugins"
CT_SERIES = "ct/totalseg_abdomen_dicom"
CR_FILE = "cxr/siim/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
PATIENT = "MEDVLM^CHAIN^TEST"
OPEN_VOCABULARY = ["Emphysema", "Lung nodule"]
# a real DICOM series carries its own RescaleSlope/Intercept: no HU metadata table (the demo's is for its volumes)
CT_OVERRIDES = ("--hu_metadata_csv", "")
ARTIFACTS = Path(
    os.environ.get("MEDVLM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "runs" / "test_artifacts")
)


def _decompressed(dataset: pydicom.Dataset) -> pydicom.Dataset:
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.decompress()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def write_ct_copy(source: Path, target: Path) -> tuple[str, str]:
    """The series with Study/Series/SOP Instance UIDs filled in (derived from the file names, so reruns agree) and
    native pixels: ``(StudyInstanceUID, SeriesInstanceUID)``."""
    target.mkdir(parents=True)
    study = generate_uid(entropy_srcs=["medvlm-chain-ct-study"])
    series = generate_uid(entropy_srcs=["medvlm-chain-ct-series"])
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        dataset = _decompressed(pydicom.dcmread(path))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
        dataset.PatientName, dataset.PatientID = PATIENT, "MEDVLM-CT-1"
        dataset.StudyDescription = "Chest CT (MONAI Label chain test)"
        dataset.save_as(target / f"{path.name}.dcm", enforce_file_format=True)
    return study, series


def write_cr_copy(source: Path, target: Path) -> str:
    """The CR instance with native pixels: its SeriesInstanceUID."""
    target.mkdir(parents=True)
    dataset = _decompressed(pydicom.dcmread(source))
    dataset.save_as(target / "chest_cr.dcm", enforce_file_format=True)
    return str(dataset.SeriesInstanceUID)


def write_corrupt(source: Path, target: Path) -> tuple[Path, Path, str]:
    """A truncated file (not DICOM any more) and an instance whose header is valid but whose pixel data is cut in
    half (a new series): ``(truncated, broken pixels, its SeriesInstanceUID)``."""
    target.mkdir(parents=True)
    truncated = target / "truncated.dcm"
    truncated.write_bytes(source.read_bytes()[:600])
    dataset = pydicom.dcmread(source)
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["medvlm-chain-broken-series"])
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["broken"])
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]
    broken = target / "broken_pixels.dcm"
    dataset.save_as(broken, enforce_file_format=True)
    return truncated, broken, str(dataset.SeriesInstanceUID)


@pytest.fixture(scope="module")
def netns():
    """A private network namespace with only loopback up (root needed: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the Orthanc chain needs root and iproute2 (ip netns): CI runs as root", pytrace=False)
    name = f"medvlm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def orthanc_chain(tmp_path_factory, monailabel_bin, demo_bundles, netns, shared_data_dir, require_fixture):
    for tool in ("Orthanc", "chromium"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run bash scripts/setup_monailabel.sh", pytrace=False)
    ct_source = require_fixture(shared_data_dir / CT_SERIES, "real CT DICOM series")
    cr_source = require_fixture(shared_data_dir / CR_FILE, "real CR DICOM file")
    data = tmp_path_factory.mktemp("dicom")
    study, ct_series = write_ct_copy(ct_source, data / "ct")
    cr_series = write_cr_copy(cr_source, data / "cr")
    truncated, broken, broken_series = write_corrupt(data / "cr" / "chest_cr.dcm", data / "corrupt")
    work = tmp_path_factory.mktemp("orthanc_chain")
    ct_files = sorted(str(p) for p in (data / "ct").iterdir())
    plan = {
        "monailabel": str(monailabel_bin),
        "studies": "http://127.0.0.1:8042/dicom-web",
        "port": 8000,
        "orthanc_plugins": PLUGINS,
        "orthanc_files": [*ct_files, str(data / "cr" / "chest_cr.dcm"), str(broken)],
        "orthanc_corrupt": [str(truncated)],
        "server_env": {
            "HOME": str(work / "home"),
            "MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI": "false",  # the bundles read the DICOM files themselves
            "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": "{}",  # CT and CR studies
            "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "dicomweb-cache"),
        },
        "conf": server_conf(demo_bundles, {"ctclip_lora.hu_metadata_csv": "''"}),
        "requests": {
            "ct": {"task": "ctclip_lora", "image": ct_series},
            "ct_open": {"task": "ctclip_lora", "image": ct_series, "params": {"class_names": OPEN_VOCABULARY}},
            "cr": {"task": "cleft_cxr", "image": cr_series},
            "cr_report": {"task": "report_gen", "image": cr_series},
            "cr_retrieval": {"task": "frozen_projection", "image": cr_series},
            "unknown_task": {"task": "deepedit", "image": ct_series},
            "unknown_series": {"task": "ctclip_lora", "image": generate_uid(entropy_srcs=["not uploaded"])},
            "empty_classes": {"task": "ctclip_lora", "image": ct_series, "params": {"class_names": []}},
            "duplicated_classes": {"task": "ctclip_lora", "image": ct_series, "params": {"class_names": ["X", "X"]}},
            "cr_to_ct_task": {"task": "ctclip_lora", "image": cr_series},
            "broken_pixels": {"task": "cleft_cxr", "image": broken_series},
            "after_errors": {"task": "cleft_cxr", "image": cr_series},
        },
        "concurrent": {"task": "cleft_cxr", "image": cr_series},
        "ohif": True,
    }
    results = run_chain(plan, work, netns=netns)
    shot = (results.get("ohif") or {}).get("screenshot")
    if shot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "ohif_study_list.png")
    ids = {"study": study, "ct": ct_series, "cr": cr_series, "broken": broken_series}
    return results, data, ids


def test_orthanc_holds_the_uploaded_series_and_refuses_the_corrupt_file(orthanc_chain):
    results, _, ids = orthanc_chain
    assert [u["status"] for u in results["uploads"]] == [200] * len(results["uploads"])
    assert results["corrupt_upload"][0]["status"] == 400
    series = {s["MainDicomTags"]["SeriesInstanceUID"] for s in results["orthanc_series"]}
    assert {ids["ct"], ids["cr"], ids["broken"]} <= series


def test_info_and_datastore_come_from_the_pacs(orthanc_chain):
    results, _, ids = orthanc_chain
    assert set(results["info"]["models"]) == {"ctclip_lora", "cleft_cxr", "report_gen", "frozen_projection"}
    assert results["info"]["datastore"]["total"] == 3  # the CT, the CR and the broken CR series


def test_served_results_equal_the_bundle_cli_on_the_same_files(orthanc_chain, demo_bundles, tmp_path):
    results, data, _ = orthanc_chain
    for name in ("ct", "ct_open", "cr", "cr_report", "cr_retrieval"):
        assert results["requests"][name]["status"] == 200, (name, results["requests"][name])
    answers = {name: r["answer"] for name, r in results["requests"].items()}
    ct_dir, cr_file = str(data / "ct"), str(data / "cr" / "chest_cr.dcm")
    root = demo_bundles["ctclip_lora"]
    cli = cli_output("ctclip_lora", root, ct_dir, tmp_path / "a", extra=CT_OVERRIDES)
    assert_probabilities_equal(answers["ct"], cli)
    cli = cli_output("ctclip_lora", root, ct_dir, tmp_path / "b", OPEN_VOCABULARY, extra=CT_OVERRIDES)
    assert_probabilities_equal(answers["ct_open"], cli)
    assert_probabilities_equal(
        answers["cr"], cli_output("cleft_cxr", demo_bundles["cleft_cxr"], cr_file, tmp_path / "c")
    )
    report = cli_output("report_gen", demo_bundles["report_gen"], cr_file, tmp_path / "d")
    assert answers["cr_report"]["generated"] == report["generated"]  # the id differs: a series UID, a file name
    retrieval = cli_output("frozen_projection", demo_bundles["frozen_projection"], cr_file, tmp_path / "e")
    assert_neighbours_equal(answers["cr_retrieval"], retrieval)  # the CR instance's nearest demo reports


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(orthanc_chain):
    requests = orthanc_chain[0]["requests"]
    expected = {"unknown_task": (404, "unknown task"), "unknown_series": (404, "unknown image id"),
                "empty_classes": (422, "is empty"), "duplicated_classes": (422, "more than once"),
                "cr_to_ct_task": (422, "ctclip_lora cannot serve"),
                "broken_pixels": (422, "cleft_cxr cannot serve")}  # fmt: skip
    for name, (status, words) in expected.items():
        assert requests[name]["status"] == status, (name, requests[name])
        assert words in requests[name]["answer"]["detail"], (name, requests[name])
    assert requests["after_errors"]["answer"]["probabilities"] == requests["cr"]["answer"]["probabilities"]


def test_eight_concurrent_requests_all_answer(orthanc_chain):
    results = orthanc_chain[0]
    assert [r["status"] for r in results["concurrent"]] == [200] * 8
    first = results["requests"]["cr"]["answer"]["probabilities"]
    assert all(r["answer"]["probabilities"] == first for r in results["concurrent"])


def test_ohif_shows_the_study_from_the_pacs(orthanc_chain):
    ohif = orthanc_chain[0]["ohif"]
    assert "MEDVLM" in ohif["dom"] and "CHAIN" in ohif["dom"], ohif["dom"][-3000:]
    assert ohif["screenshot"] and Path(ohif["screenshot"]).stat().st_size > 10_000
