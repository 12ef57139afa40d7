"""Report cleaning and the synthetic demo data's signal."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from common.data.manifest import load_manifest
from common.data.report_cleaning import clean_report, extract_sections
from common.data.synthetic_cxr import make_synthetic_cxr_dataset

REPORT = """FINDINGS: The heart is normal in size. XXXX
  opacity in the right  lung .
IMPRESSION: 1. No acute disease. 2. XXXX granuloma."""


def test_sections_placeholders_and_whitespace():
    assert set(extract_sections(REPORT)) == {"findings", "impression"}
    assert clean_report(REPORT, sections=["findings"]) == "The heart is normal in size. opacity in the right lung."
    assert clean_report(REPORT, sections=["impression"]) == "No acute disease. granuloma."
    assert "XXXX" in clean_report(REPORT, placeholder=None)
    assert clean_report("No sections here.", sections=["findings"]) == "No sections here."  # falls back to the text
    assert clean_report("   ") == ""
    one_line = "FINDINGS: Heart is enlarged. No effusion. IMPRESSION: Cardiomegaly."
    assert extract_sections(one_line) == {"findings": "Heart is enlarged. No effusion.", "impression": "Cardiomegaly."}


def test_synthetic_images_carry_their_label(tmp_path):
    from PIL import Image

    manifest = make_synthetic_cxr_dataset(tmp_path, num_samples=120, image_size=48, seed=3)
    rows = load_manifest(manifest, label_columns=["label"], require_report=True)
    features = np.stack(
        [np.asarray(Image.open(r["image"]).resize((16, 16)), dtype=np.float32).ravel() / 255 for r in rows]
    )
    labels = np.array([r["label"] for r in rows])
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), features, labels, cv=3).mean()
    assert accuracy > 0.5  # 6 classes: chance is 0.17
    keywords = {
        "atelectasis": ["atelectasis"],
        "cardiomegaly": ["cardi", "enlarged"],
        "consolidation": ["consolidation", "opacity"],
        "edema": ["edema"],
        "pleural effusion": ["effusion"],
        "no finding": ["clear", "no acute"],
    }
    for row in rows[:12]:  # the report names the finding the image shows
        assert any(w in row["report"].lower() for w in keywords[row["label_name"].lower()]), row["report"]


def test_synthetic_data_is_reused_unless_overwritten(tmp_path):
    first = make_synthetic_cxr_dataset(tmp_path, num_samples=12, image_size=32)
    stamp = first.stat().st_mtime_ns
    assert make_synthetic_cxr_dataset(tmp_path, num_samples=12, image_size=32).stat().st_mtime_ns == stamp
    assert (
        make_synthetic_cxr_dataset(tmp_path, num_samples=12, image_size=32, overwrite=True).stat().st_mtime_ns != stamp
    )
