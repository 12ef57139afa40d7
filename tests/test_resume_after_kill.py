"""kill -9 a bundle's demo training after its first complete resume state, rerun the same command, and compare.

The rerun must resume (not start at epoch 0) and end with exactly the weights of an uninterrupted run: the final and
the best checkpoint, every tensor bit-identical (CPU, ``set_determinism``). A two-stage bundle is killed in each stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.bundle_runner import ENV, REPO_ROOT, run_bundle

pytestmark = pytest.mark.slow


def _args(bundle: str, configs: list[str], root: Path, overrides: tuple[str, ...]) -> list[str]:
    files = ",".join(f"'bundles/{bundle}/configs/{c}.json'" for c in configs)
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"[{files}]",
        "--bundle_root",
        str(root),
        *overrides,
    ]


def _kill_after_first_state(args: list[str], state: Path, log_path: Path, timeout: float = 600) -> None:
    """Start ``args``, kill -9 it as soon as ``state`` (the first complete resume state) exists."""
    log = open(log_path, "w")
    process = subprocess.Popen(
        args, cwd=REPO_ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not state.exists():
            if process.poll() is not None:
                pytest.fail(f"{' '.join(args)} ended (rc {process.returncode}) before writing {state}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {state} after {timeout} s")
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, "the training finished before it could be killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    assert files, f"no weights in {path}"
    return {
        f"{f.relative_to(path) if path.is_dir() else f.name}/{k}": v for f in files for k, v in load_file(f).items()
    }


def _assert_same(reference: Path, resumed: Path) -> None:
    ref, got = _weights(reference), _weights(resumed)
    assert sorted(ref) == sorted(got)
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differing, f"{resumed} differs from the uninterrupted run's {reference} in {differing[:5]}"


# bundle, stages (configs, resume state name, overrides), compared outputs (relative to models/)
CASES = {
    "frozen_projection": (
        [(["train", "demo"], "model", ("--num_epochs", "4"))],
        ["model.safetensors", "model_final.safetensors"],
    ),
    "ctclip_lora": (  # validates before training: the resume must be restored before that validation scores
        [(["train", "demo"], "adapters", ("--num_epochs", "3"))],
        ["adapters", "adapters.safetensors"],
    ),
    "report_gen": (
        [
            (["train", "demo"], "stage1_best", ("--num_epochs", "2", "--val_interval", "2")),
            (["train", "train_stage2", "demo"], "stage2_best", ("--num_epochs", "2", "--val_interval", "2")),
        ],
        ["stage1", "stage1_best", "stage2", "stage2_best"],
    ),
}


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_killed_training_resumes_to_the_uninterrupted_weights(bundle: str, tmp_path: Path) -> None:
    stages, outputs = CASES[bundle]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for configs, _, overrides in stages:
        run_bundle(bundle, configs, reference, *overrides)
    for configs, state, overrides in stages:
        state_path = killed / "models" / "resume" / f"{state}.pt"
        _kill_after_first_state(_args(bundle, configs, killed, overrides), state_path, tmp_path / f"killed-{state}.log")
        result = run_bundle(bundle, configs, killed, *overrides)
        assert "resumed stage" in result.stdout + result.stderr, "the rerun did not resume"
    for name in outputs:
        _assert_same(reference / "models" / name, killed / "models" / name)
