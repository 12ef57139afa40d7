"""kill -9 in the middle of an adapter-folder save: the next run finds the previous complete folder, whose header
(base_models.json) agrees with its files, and no ``.adapters.tmp-*`` / ``.adapters.old-*`` leftovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from common.engines.save_handler import TrainedWeightsSaveHandler
from tests.bundle_runner import ENV, REPO_ROOT

# Saves epoch 1, then dies by SIGKILL inside epoch 2's save, just before its `kill_at`-th os.replace: 1 = after the
# staging folder is complete (nothing swapped yet), 2 = between the two renames of the swap (the old folder moved
# aside, the new one not yet in place).
SCRIPT = """
import os, signal, sys, torch
from ignite.engine import Engine
import common.data.atomic_io as atomic_io
from common.engines.checkpoint import EngineCheckpoint, metric_score
from common.engines.save_handler import TrainedWeightsSaveHandler
from common.peft.lora import apply_lora

folder, kill_at = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), ["0"], rank=2, log_summary=False)
to_save = {"adapters": model}
handler = TrainedWeightsSaveHandler(folder, "base", to_save=to_save)
checkpoint = EngineCheckpoint(to_save, handler, filename_pattern="adapters", score_function=metric_score("val"))
calls = []
real_replace = os.replace

def replace(src, dst):
    if engine.state.epoch == 2:
        calls.append(src)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

atomic_io.os.replace = replace

def epoch(engine, _):
    with torch.no_grad():
        model.base_model.model[0].lora_B["default"].weight.fill_(engine.state.epoch)
    engine.state.metrics["val"] = float(engine.state.epoch)

engine = Engine(epoch)
checkpoint.attach(engine)
engine.run([0], max_epochs=3)
"""


@pytest.mark.parametrize("kill_at", [1, 2], ids=["staging-complete", "between-renames"])
def test_a_killed_adapter_save_leaves_the_previous_folder_and_no_leftovers(tmp_path, kill_at):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(kill_at)],
        cwd=REPO_ROOT,
        env={**ENV, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapters.")], "the kill left nothing to clean"

    TrainedWeightsSaveHandler(tmp_path, "base")  # what the rerun creates before it trains

    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters"]
    folder = tmp_path / "adapters"
    header = json.loads((folder / "base_models.json").read_text())
    weights = load_file(folder / "adapter_model.safetensors")
    lora_b = next(v for k, v in weights.items() if "lora_B" in k)
    assert header["epoch"] == 1 and torch.all(lora_b == 1), "the header and the files are not the same epoch's"
