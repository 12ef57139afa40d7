"""The last line of a failed run names the bad input (common/errors.py); a bug keeps its own traceback.

The unit tests check :func:`common.errors.root_cause` on what MONAI and a DataLoader worker raise, and the hook in a
plain subprocess; the slow ones run bundles as a user does (``python -m monai.bundle run``) on a manifest with a
corrupt image and check the last stderr line and that files written before (checkpoint, eval) are byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import ENV, REPO_ROOT
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ScaleIntensityd

from common.data.image_loading import LoadRadiographd
from common.data.manifest import write_manifest
from common.errors import root_cause

from .test_fault_matrix import make_dataset

PREFIX = "The run failed on bad input (details above): "


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + ENV.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_monai_wrapped_input_error_is_the_last_line():
    result = _python(
        "import common\n"
        "from monai.bundle import ConfigParser\n"
        "rows = \"$common.data.manifest.load_manifest('/nowhere/m.csv')\"\n"
        "p = ConfigParser({'imports': ['$import common'], 'rows': rows})\n"
        "p.get_parsed_content('rows')\n"
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Failed to evaluate ConfigExpression" in result.stderr  # the traceback is kept
    assert lines[-1] == PREFIX + "FileNotFoundError: manifest not found: /nowhere/m.csv"


def test_a_bug_keeps_its_own_last_line():
    result = _python("import common\nimport torch\ntorch.zeros(2) @ torch.zeros(3)\n")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("RuntimeError:") and "bad input" not in result.stderr


def test_value_error_from_another_library_is_not_taken_for_ours():
    with pytest.raises(ValueError) as info:
        int("not a number")  # raised here, in a test, not in common
    assert root_cause(info.value) is None


def test_error_in_a_dataloader_worker_is_found_in_its_traceback_text(tmp_path):
    manifest, rows = make_dataset(tmp_path, "report_gen")
    (tmp_path / "images" / "page.png").write_text("<html>404</html>\n")
    data = [{"image": str(tmp_path / "images" / "page.png"), "row": 7, "manifest": str(manifest)}]
    loader = DataLoader(Dataset(data, Compose([LoadRadiographd("image"), ScaleIntensityd("image")])), num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "DataLoader worker" in str(info.value)
    line = root_cause(info.value)
    assert (
        line.startswith("ValueError: could not read image") and "row 7 of" in line and "is text, not an image" in line
    )


# ---- end to end: our bundles, MONAI's runner -----------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _failed_run(bundle: str, configs: tuple[str, ...], root: Path, *overrides: str) -> list[str]:
    files = ",".join(f"'bundles/{bundle}/configs/{c}.json'" for c in configs)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"[{files}]", "--bundle_root", str(root)]
    result = subprocess.run(
        [*args, *overrides], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode != 0, result.stdout[-2000:]
    return result.stderr.strip().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(
    "bundle, configs, fault",
    [
        ("cleft_cxr", ("train", "demo"), "image"),
        ("report_gen", ("train", "demo"), "image"),
        ("frozen_projection", ("inference", "demo"), "checkpoint"),
    ],
)
def test_failed_bundle_run_ends_with_the_bad_input(tmp_path, bundle, configs, fault):
    data = tmp_path / "data"
    manifest, rows = make_dataset(data, bundle)
    page = data / "images" / "page.png"
    page.write_text("<html><body>404 Not Found</body></html>\n")
    if fault == "image":
        rows[1]["image"] = "images/page.png"
    write_manifest(rows, manifest)
    root = tmp_path / "bundle"
    for name in ("models/model.pt", "eval/metrics.json"):  # written by an earlier run (a cut one here)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(64))
    before = _digest(root)
    overrides = ("--dataset_dir", str(data), "--manifest", str(manifest), "--input_manifest", str(manifest))
    lines = _failed_run(bundle, configs, root, *overrides, "--class_names", "['Effusion']")
    assert lines[-1].startswith(PREFIX), lines[-5:]
    if fault == "image":
        assert f"{manifest}: row 2: field 'image': {page} is text, not an image" in lines[-1]
    else:
        assert f"checkpoint {root / 'models' / 'model.pt'} is not a readable torch file" in lines[-1]
    assert {k: v for k, v in _digest(root).items() if k in before} == before
