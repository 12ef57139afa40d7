"""The IU chest X-ray XML reader on the real report files (research fixtures in ../shared/data)."""

from __future__ import annotations

import pytest

from common.data.iu_xray import iu_xray_manifest_rows, parse_iu_xray_xml, read_iu_xray_reports
from common.data.manifest import load_manifest, write_manifest


@pytest.fixture
def iu_dir(shared_data_dir):
    folder = shared_data_dir / "reports" / "iu_xray"
    if not folder.is_dir():
        pytest.skip(f"IU X-ray reports not found under {folder}")
    return folder


def test_reads_the_unpacked_xml_files(iu_dir):
    reports = read_iu_xray_reports(iu_dir / "ecgen-radiology")
    assert [r["id"] for r in reports] == [f"CXR{n}" for n in (1, 2, 4, 6, 8, 11, 15, 18, 28, 35, 48, 64, 245)]
    first = reports[0]
    assert first["findings"].startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert first["impression"] == "Normal chest x-XXXX."
    assert first["indication"] == "Positive TB test"
    assert first["mesh_major"] == ["normal"]
    assert first["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]


def test_manifest_rows_join_findings_and_impression_without_placeholders(iu_dir, tmp_path):
    rows = iu_xray_manifest_rows(read_iu_xray_reports(iu_dir / "ecgen-radiology"), image_prefix="images/")
    assert len(rows) == 13
    first = rows[0]
    assert first["image"] == "images/CXR1_1_IM-0001-3001.png"
    assert "XXXX" not in first["report"] and first["report"].endswith("Normal chest x-.")
    assert first["report"].startswith(first["findings"])
    # the rows are a manifest the shared loader reads (images are not in the fixture, so files are not checked)
    path = write_manifest(rows, tmp_path / "iu.csv")
    loaded = load_manifest(path, tmp_path, require_report=True, check_files=False)
    assert [r["report"] for r in loaded] == [r["report"] for r in rows]


def test_reads_the_whole_archive_and_counts_skips(iu_dir, caplog):
    archive = iu_dir / "NLMCXR_reports.tgz"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    reports = read_iu_xray_reports(archive)
    assert len(reports) == 3955
    with caplog.at_level("WARNING"):
        rows = iu_xray_manifest_rows(reports, sections=["findings"])
    assert 3000 < len(rows) < 3955
    assert f"{3955 - len(rows)} of 3955 studies skipped" in caplog.text


def test_bad_xml_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="broken.xml"):
        parse_iu_xray_xml(b"<eCitation><uId", source="broken.xml")
    with pytest.raises(ValueError, match="other.xml: no <uId"):
        parse_iu_xray_xml(b"<root/>", source="other.xml")
    with pytest.raises(FileNotFoundError, match="IU X-ray reports not found"):
        read_iu_xray_reports(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown IU X-ray section"):
        iu_xray_manifest_rows([], sections=["history"])


def test_real_reports_flow_through_cleaning_and_collate(iu_dir, tmp_path):
    import torch

    from common.data.report_tokenization import build_word_level_tokenizer
    from common.methods.report_gen.data import load_report_rows, make_collators

    rows = iu_xray_manifest_rows(read_iu_xray_reports(iu_dir / "ecgen-radiology"), placeholder=None)
    loaded = load_report_rows(write_manifest(rows, tmp_path / "iu.csv"), tmp_path, check_files=False, placeholder=None)
    assert all(r["report"] == r["report"].lower() for r in loaded)
    tokenizer = build_word_level_tokenizer([r["report"] for r in loaded] + ["findings :"])
    collate, _ = make_collators(tokenizer, "<image> findings :", 4, text_max_length=30)
    batch = collate([{**r, "image": torch.zeros(1, 8, 8)} for r in loaded])
    lengths = [len(tokenizer(r["report"], add_special_tokens=False)["input_ids"]) for r in loaded]
    assert collate.num_truncated == sum(n > 30 for n in lengths) > 0
    assert int((batch["labels"] != -100).sum(dim=1).max()) == 31  # 30 report tokens + EOS
    assert batch["report"] == [r["report"] for r in loaded]  # references stay whole
    assert "xxxx" in " ".join(batch["report"])  # placeholders kept when asked (placeholder=None)
