"""The bundles' pinned requirements are the set-up's pins, install as the zoo's CI installs them, and keep the
MONAI Label environment's older versions allowed by ``pyproject.toml``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib  # Python 3.11+, as set-up and CI use
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from package_bundle import install_line, pin_problems, read_pins, requirements  # noqa: E402

BUNDLES = sorted(p.parent.parent.name for p in ROOT.glob("bundles/*/configs/metadata.json"))
# what the MONAI Label environment has (monailabel 0.8.5 pins numpy<2, jsonschema<4, pydicom<2.5); common installs there
MONAI_LABEL_ENV = {"numpy": "1.26.4", "jsonschema": "3.2.0", "pydicom": "2.4.5"}


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_versions_are_the_constraints_pins(name):
    assert pin_problems(name) == []


def test_a_changed_pin_is_reported_with_the_file_and_both_versions():
    pins = {**read_pins(), "transformers": "0.0.1"}
    problems = pin_problems("report_gen", pins)
    assert len(problems) == 1 and "transformers" in problems[0] and "0.0.1" in problems[0]
    assert "report_gen/configs/metadata.json" in problems[0]


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_readme_shows_the_install_line_its_zip_needs(name):
    readme = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    assert install_line(name) in readme, f"bundles/{name}/docs/README.md: the pip line differs from the metadata pins"
    version = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())["version"]
    zips = set(re.findall(rf"\b{name}_v[0-9.]*[0-9]\.zip", readme))
    assert zips == {f"{name}_v{version}.zip"}, f"bundles/{name}/docs/README.md downloads {zips}; packaging: v{version}"


def test_setup_installs_with_the_constraints_file():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c scripts/constraints.txt" in line for line in installs)


def test_pyproject_floors_allow_the_monai_label_environment():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = {Requirement(d).name: Requirement(d) for d in dependencies}
    for package_name, version in MONAI_LABEL_ENV.items():
        assert requirements[package_name].specifier.contains(version), (
            f"pyproject.toml excludes {package_name} {version}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("python_version", ["3.10", "3.11"])
def test_the_zips_requirements_resolve_to_wheels_on_the_zoo_and_our_python(python_version, tmp_path):
    """The pins of all four zips together (each zip's are a subset, and they share every version) resolve to wheels
    for Python 3.10 (the model zoo's CI) and 3.11 (ours): pip's own resolver, against the index set-up uses."""
    pins = sorted({pin for name in BUNDLES for pin in requirements(name)})
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:"]
    args += ["--python-version", python_version, "--target", str(tmp_path / "target"), *pins]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"the zips' pins do not resolve on Python {python_version}:\n{result.stderr[-3000:]}"
