"""Run a bundle the way a user does: ``python -m monai.bundle run`` from the repository root, in a subprocess.

Shared by the bundles' end-to-end tests (importable because ``tests/`` holds the root conftest).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
}
# two CPU processes with gloo; --standalone picks a free rendezvous port, so concurrent runs cannot collide
TORCHRUN_2 = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def run_command(args: Sequence[str], cwd: Path = REPO_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``args``; a non-zero exit fails the test with the tail of its output."""
    result = subprocess.run(list(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n"
            f"exceptions raised (each rank's, in order):\n{exception_lines(result.stderr)}"
        )
    return result


def exception_lines(stderr: str, limit: int = 40) -> str:
    """The distinct ``SomeError: message`` lines of ``stderr``: under torchrun the root cause of a failure is often
    far above the tail a failure message can show (the other rank's traceback and the launcher's summary follow it)."""
    pattern = re.compile(r"^(?:\[rank\d+\]:\s*)?[\w.]*(?:Error|Exception|Interrupt)\b.*")
    seen = dict.fromkeys(m.group(0) for line in stderr.splitlines() if (m := pattern.match(line.strip())))
    return "\n".join(list(seen)[:limit]) or "(none)"


def run_bundle(
    bundle: str,
    configs: Sequence[str],
    bundle_root: Path,
    *overrides: str,
    launcher: Sequence[str] = (),
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """``python [launcher] -m monai.bundle run --config_file "[...]" --bundle_root <root> <overrides>``.

    Args:
        bundle: the folder under ``bundles/``.
        configs: config names in overlay order, with or without ``.json``.
        bundle_root: where models, eval and demo data go (a temporary folder in tests).
        overrides: ``--key value`` pairs for the MONAI runner.
        launcher: e.g. :data:`TORCHRUN_2` for a two-process DDP run.
    """
    files = ",".join(f"'bundles/{bundle}/configs/{c if c.endswith('.json') else c + '.json'}'" for c in configs)
    args = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--config_file", f"[{files}]"]
    return run_command([*args, "--bundle_root", str(bundle_root), *overrides], timeout=timeout)
