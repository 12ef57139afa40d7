"""The demo's word-level tokenizer is not silently reused on real reports (IU X-ray, ../shared/data).

Before, ``load_or_build_tokenizer`` reloaded whatever ``models/tokenizer`` held: the demo's ~60-word vocabulary,
under which over 40% of the IU report tokens are ``<unk>``.
"""

from __future__ import annotations

import json
import logging

import pytest

from common.data.iu_xray import iu_xray_manifest_rows, read_iu_xray_reports
from common.data.manifest import write_manifest
from common.data.report_tokenization import MAX_UNKNOWN_TOKEN_RATE, unknown_token_rate
from common.data.synthetic_cxr import make_synthetic_cxr_dataset
from common.methods.report_gen.data import load_or_build_tokenizer, load_report_rows


@pytest.fixture
def demo_rows(tmp_path):
    manifest = make_synthetic_cxr_dataset(tmp_path / "demo_data", num_samples=40, image_size=32, seed=0)
    return load_report_rows(manifest, tmp_path / "demo_data", "train")


@pytest.fixture
def iu_rows(tmp_path, shared_data_dir, require_fixture):
    folder = require_fixture(shared_data_dir / "reports" / "iu_xray" / "ecgen-radiology", "IU X-ray reports")
    rows = iu_xray_manifest_rows(read_iu_xray_reports(folder), image_prefix="images/")
    for row in rows:
        row["split"] = "train"
    manifest = write_manifest(rows, tmp_path / "iu" / "manifest.csv")
    return load_report_rows(manifest, tmp_path / "iu", "train", check_files=False)


def test_the_demo_tokenizer_is_refused_on_real_reports(tmp_path, demo_rows, iu_rows, caplog):
    save_dir = tmp_path / "models" / "tokenizer"
    demo = load_or_build_tokenizer("", demo_rows, save_dir)
    record = json.loads((save_dir / "built_from.json").read_text())
    assert record["training_rows"] == len(demo_rows) and record["training_manifest"].endswith("manifest.csv")
    assert len(load_or_build_tokenizer("", demo_rows, save_dir)) == len(demo)  # same data: reused

    with pytest.raises(ValueError) as err:
        load_or_build_tokenizer("", iu_rows, save_dir)
    message = str(err.value)
    assert f"the tokenizer stored in {save_dir} was built from {record['training_manifest']}" in message
    assert f"({len(iu_rows)} rows): its vocabulary is another data set's" in message

    rate = unknown_token_rate(demo, [r["report"] for r in iu_rows])
    assert rate > 0.3  # the figure of the issue: most IU words are not in the demo vocabulary
    with caplog.at_level(logging.WARNING):
        load_or_build_tokenizer("", iu_rows, save_dir, allow_other_run_weights=True)
    assert f"{100 * rate:.1f}% of the tokens of the train reports ({len(iu_rows)} texts) are unknown" in caplog.text
    assert f"over the {100 * MAX_UNKNOWN_TOKEN_RATE:.1f}% threshold" in caplog.text


def test_a_tokenizer_built_from_the_real_reports_has_no_unknown_warning(tmp_path, iu_rows, caplog):
    with caplog.at_level(logging.WARNING):
        tokenizer = load_or_build_tokenizer("", iu_rows, tmp_path / "tokenizer")
    assert unknown_token_rate(tokenizer, [r["report"] for r in iu_rows]) == 0.0
    assert "are unknown to the tokenizer" not in caplog.text
