"""Every bundle's metadata passes MONAI's verify_metadata (offline, with the schema kept in the repository)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in ROOT.glob("bundles/*/configs/metadata.json"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_verify_metadata(bundle):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(bundle / "configs" / "metadata.json"),
            "--filepath",
            str(ROOT / "schemas" / "meta_schema_20240725.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_layout_and_changelog(bundle):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata.get("changelog", {}), "every version needs a changelog entry"
    for required in (
        "LICENSE",
        "docs/README.md",
        "configs/train.json",
        "configs/inference.json",
        "configs/logging.conf",
    ):
        assert (bundle / required).is_file(), f"{bundle.name} lacks {required}"
    assert not list(bundle.rglob("*.py")), "bundles hold configs and docs only; Python belongs in common/"
