"""kill -9 of an evaluate run while it writes ``eval/`` leaves the previous complete files; a rerun completes.

The evaluate process is killed (SIGKILL, no handler runs) at the moment it is about to swap its first new file into
``eval/``: the new file is written beside the old one, the rename has not happened. Every file of the previous
evaluation must be byte-identical afterwards, and the rerun must write the new results.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import ENV, REPO_ROOT, run_bundle

# runs ``python -m monai.bundle ...`` with os.replace killing the process on its first rename into KILL_IN
DRIVER = """
import os, runpy, signal, sys
kill_in = sys.argv.pop(1)
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.abspath(str(dst)).startswith(kill_in):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
sys.argv[0] = "monai.bundle"
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _configs(*names: str) -> str:
    return "[" + ",".join(f"'bundles/frozen_projection/configs/{c}.json'" for c in names) + "]"


@pytest.mark.slow
def test_kill_during_evaluation_writing_keeps_the_previous_files(tmp_path):
    small = ("--demo_num_samples", "96", "--num_epochs", "1")
    run_bundle("frozen_projection", ("train", "demo"), tmp_path, *small)
    run_bundle("frozen_projection", ("train", "evaluate", "demo"), tmp_path, *small)
    eval_dir = tmp_path / "eval"
    before = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file()}
    assert {"metrics.json", "downstream.png"} <= set(before)

    driver = tmp_path / "kill_driver.py"
    driver.write_text(DRIVER)
    other_ks = ("--retrieval_ks", "[1, 2]")  # the new metrics.json differs from the old one
    args = [sys.executable, str(driver), str(eval_dir.resolve()), "run", "--config_file"]
    args += [_configs("train", "evaluate", "demo"), "--bundle_root", str(tmp_path), *small, *other_ks]
    killed = subprocess.run(args, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    after = {p.name: p.read_bytes() for p in eval_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before  # nothing of the previous evaluation changed or went missing
    leftovers = [p.name for p in Path(eval_dir).iterdir() if p.name.startswith(".")]
    assert leftovers, "the killed run had written its new file beside the old one"

    run_bundle("frozen_projection", ("train", "evaluate", "demo"), tmp_path, *small, *other_ks)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert "image_to_text_R@2" in metrics["retrieval"] and "image_to_text_R@10" not in metrics["retrieval"]
