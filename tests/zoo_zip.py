"""Bundle zips as the model zoo and a user get them: packaged by ``scripts/package_bundle.py``, fetched with
``python -m monai.bundle download --url file://...``, run from the downloaded folder, checked by the zoo's CI.

Shared by ``tests/zoo_ci/`` (importable because ``tests/`` holds the root conftest).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bundle_runner import REPO_ROOT, run_command

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from package_bundle import package, read_pins, requirements, vendored_package  # noqa: E402, F401

BUNDLES = ("cleft_cxr", "ctclip_lora", "frozen_projection", "report_gen")
ZOO_CHECKS = REPO_ROOT / "tests" / "zoo_ci" / "run_zoo_checks.py"
# a small, fast demo per bundle: enough rows for every split, one epoch; cleft_cxr's batch of 32 needs more train
# rows than 40 samples give (28; 14 per rank on two), so its batch is 8
DEMO = {name: ("--demo_num_samples", "40", "--num_epochs", "1") for name in BUNDLES}
DEMO["cleft_cxr"] += ("--batch_size", "8")
# the training runs that write models/model.pt: report_gen writes it from stage 2 (which starts from stage 1)
TRAIN_RUNS = {name: (("train", "demo"),) for name in BUNDLES}
TRAIN_RUNS["report_gen"] = (("train", "demo"), ("train", "train_stage2", "demo"))
# overlay order of each bundle's multi-GPU demo, as its own DDP test runs it
DIST_CONFIGS = {
    "cleft_cxr": ("train", "multi_gpu_train", "demo"),
    "ctclip_lora": ("train", "demo", "multi_gpu_train"),
    "frozen_projection": ("train", "multi_gpu_train", "demo"),
    "report_gen": ("train", "demo", "multi_gpu_train"),
}


def download(name: str, archive: Path, bundle_dir: Path) -> Path:
    """``monai.bundle download`` of ``archive`` (a file:// URL) into ``bundle_dir``; the bundle folder."""
    run_command(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "download",
            "--name",
            name,
            "--url",
            archive.as_uri(),
            "--bundle_dir",
            str(bundle_dir),
        ],
        cwd=bundle_dir.parent,
    )
    return bundle_dir / name


def packaged(name: str, tmp_path: Path, model: Path | None = None, tag: str = "zip") -> Path:
    """Package bundle ``name`` (with ``model`` as models/model.pt when given) and download it; the bundle folder."""
    archive = package(name, tmp_path / f"dist_{tag}", model=model)
    return download(name, archive, tmp_path / f"downloaded_{tag}")


def run_in_bundle(bundle: Path, configs: tuple[str, ...], *overrides: str, launcher: tuple[str, ...] = ()):
    """``python -m monai.bundle run`` inside a downloaded bundle folder (its vendored code; ``bundle_root`` ``.``)."""
    files = ",".join(f"'configs/{c}.json'" for c in configs)
    args = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--config_file", f"[{files}]", *overrides]
    return run_command(args, cwd=bundle)


def train_demo(bundle: Path, name: str) -> Path:
    """The demo training runs of bundle ``name`` inside its downloaded folder; the ``models/model.pt`` they wrote."""
    for configs in TRAIN_RUNS[name]:
        run_in_bundle(bundle, configs, *DEMO[name])
    return bundle / "models" / "model.pt"


def zoo_checks(models: Path, name: str, *modes: str, repository_form: bool = False) -> str:
    """The zoo's ``verify_bundle.py`` in each mode on ``models/<name>``; its output."""
    out = []
    for mode in modes:
        args = [sys.executable, str(ZOO_CHECKS), "--models", str(models), "--bundle", name, "--mode", mode]
        out.append(run_command(args + (["--repository-form"] if repository_form else []), cwd=models).stdout)
    return "\n".join(out)
