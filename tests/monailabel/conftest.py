"""Fixtures of the MONAI Label serving tests: the app's own virtual environment and demo models trained once per
session (few epochs, in a temporary folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from bundle_runner import run_bundle
from serving import DEMO, REPO_ROOT, TRAIN, VENV


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def monailabel_bin(require_fixture) -> Path:
    """``.venv-monailabel/bin/monailabel``, set up by ``scripts/setup.sh`` (it calls ``scripts/setup_monailabel.sh``).
    In CI a missing environment is set up here, and fails the test if that fails; locally it is skipped."""
    exe = VENV / "bin" / "monailabel"
    if not (VENV / ".setup-done").is_file() and _in_ci():
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_monailabel.sh")], check=False, timeout=3000)
    require_fixture(VENV / ".setup-done", "the MONAI Label environment (run bash scripts/setup_monailabel.sh)")
    return exe


@pytest.fixture(scope="session")
def demo_bundles(tmp_path_factory) -> dict[str, Path]:
    """The four served bundles' demo models, trained with few epochs: ``{bundle: bundle_root}``."""
    base = tmp_path_factory.mktemp("monailabel_bundles")
    roots = {}
    for bundle, steps in TRAIN.items():
        roots[bundle] = base / bundle
        for configs, extra in steps:
            run_bundle(bundle, configs, roots[bundle], *DEMO[bundle], *extra)
    return roots
