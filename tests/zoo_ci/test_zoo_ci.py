"""The MONAI model zoo's own CI scripts (pinned copy in ``tests/zoo_ci/model_zoo``) on our bundles.

Repository form: ``verify_bundle.py`` min and full mode (with the documented exclusions of ``exclusions.json``) and
``get_bundle_requirements.py``. Zip form: two bundles loaded in one process each import their own vendored code.
The zips' demo training and the zoo checks on the zip with its ``models/model.pt`` are in ``unit_tests/``.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from bundle_runner import REPO_ROOT, run_command
from zoo_zip import BUNDLES, package, read_pins, requirements, vendored_package

ZOO = REPO_ROOT / "tests" / "zoo_ci" / "model_zoo"


@pytest.mark.parametrize("name", BUNDLES)
def test_repository_form_passes_verify_bundle_min_and_full(name, tmp_path):
    shutil.copytree(REPO_ROOT / "bundles" / name, tmp_path / name)
    args = [sys.executable, str(REPO_ROOT / "tests" / "zoo_ci" / "run_zoo_checks.py"), "--models", str(tmp_path)]
    for mode in ("min", "full"):
        result = run_command([*args, "--bundle", name, "--mode", mode, "--repository-form"], cwd=tmp_path)
        assert f"{name}: verify_bundle {mode} passed" in result.stdout


@pytest.mark.parametrize("name", BUNDLES)
def test_zoo_requirements_are_exact_pins_of_the_constraints(name, tmp_path):
    shutil.copytree(REPO_ROOT / "bundles" / name, tmp_path / "models" / name)
    script = ZOO / "ci" / "get_bundle_requirements.py"
    result = run_command([sys.executable, str(script), "-b", name, "-p", "models"], cwd=tmp_path)
    lines = (tmp_path / result.stdout.strip()).read_text().split()
    assert lines == requirements(name)
    pins = read_pins()
    for line in lines:
        package_name, _, version = line.partition("==")
        assert version and pins.get(package_name.lower()) == version, f"{name}: {line} is not a pin of constraints.txt"
    assert not [line for line in lines if line.startswith("medvlm-bundles")], "no index has medvlm-bundles"


def _imports_of(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", BUNDLES)
def test_zip_code_and_configs_name_only_their_own_vendored_package(name, tmp_path):
    own = vendored_package(name)
    with zipfile.ZipFile(package(name, tmp_path)) as archive:
        for entry in archive.namelist():
            text = archive.read(entry).decode() if entry.endswith((".py", ".json")) else ""
            if entry.endswith(".py"):
                assert entry.startswith(f"{name}/{own}/"), entry
                assert "common" not in _imports_of(text), f"{entry} imports the shared name 'common'"
            elif entry.endswith(".json"):
                assert not re.search(r"(?<![\w.])common\.[A-Za-z_]|import common\b", text), f"{entry} names 'common'"


def test_two_bundle_zips_in_one_process_use_their_own_vendored_code(tmp_path):
    """As a MONAI Label app does: two downloaded bundles' configs parsed in one process, each with its own code.

    The second bundle's vendored copy is changed (as a different release of ``common`` would be); each bundle's
    parsed config must reach the module file of its own folder, and no shared ``common`` module is imported.
    """
    folders = {}
    for name in ("frozen_projection", "ctclip_lora"):
        archive = package(name, tmp_path / "dist")
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp_path / "bundles")
        folders[name] = tmp_path / "bundles" / name
    marker = folders["ctclip_lora"] / vendored_package("ctclip_lora") / "__init__.py"
    marker.write_text(marker.read_text() + '\nRELEASE = "other"\n')
    code = f"""
import json, sys
from monai.bundle import ConfigParser
folders = {json.dumps({k: str(v) for k, v in folders.items()})}
seen = {{}}
for name, folder in folders.items():
    sys.path.insert(0, folder)
    parser = ConfigParser()
    parser.read_config(folder + "/configs/train.json")
    parser["bundle_root"] = folder
    parser["zoo_probe"] = "$" + name + "_common.losses.clip_loss"
    module = parser.get_parsed_content("zoo_probe")
    seen[name] = (module.__file__, getattr(sys.modules[name + "_common"], "RELEASE", "own"))
print(json.dumps({{"seen": seen, "common_imported": "common" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (module_file, _release) in report["seen"].items():
        assert module_file.startswith(str(folders[name])), f"{name} imported {module_file}"
    assert report["seen"]["ctclip_lora"][1] == "other" and report["seen"]["frozen_projection"][1] == "own"
    assert not report["common_imported"]


@pytest.mark.parametrize("name", BUNDLES)
def test_zip_passes_the_zoo_code_format_and_pre_commit_checks(name, tmp_path):
    """The zoo's ``runtests.sh --codeformat`` tools (isort, black, flake8 with its settings) and its pre-commit
    ``pretty-format-json`` / ``end-of-file-fixer`` hooks, run as the zoo runs them, change nothing in the zip."""
    with zipfile.ZipFile(package(name, tmp_path / "dist")) as archive:
        archive.extractall(tmp_path / "models")
    bundle = tmp_path / "models" / name
    code = str(bundle / vendored_package(name))
    configs = sorted(str(p) for p in (bundle / "configs").glob("*.json"))
    texts = sorted(str(p) for p in bundle.rglob("*") if p.is_file() and p.suffix != ".pt")
    checks = [
        ["-m", "isort", "--check", "--settings-path", str(ZOO / "setup.cfg"), code],
        ["-m", "black", "--check", "--skip-magic-trailing-comma", "--config", str(ZOO / "pyproject.toml"), code],
        ["-m", "flake8", "--config", str(ZOO / "setup.cfg"), code],
        ["-m", "pre_commit_hooks.pretty_format_json", "--no-sort-keys", "--indent=4", *configs],
        ["-m", "pre_commit_hooks.end_of_file_fixer", *texts],
        ["-m", "pre_commit_hooks.trailing_whitespace_fixer", *[t for t in texts if not t.endswith(".md")]],
    ]
    for args in checks:
        result = subprocess.run([sys.executable, *args], cwd=tmp_path / "models", capture_output=True, text=True)
        assert result.returncode == 0, f"{args[1]}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
