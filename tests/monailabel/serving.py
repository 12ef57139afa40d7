"""Helpers of the MONAI Label serving tests: the app's start-up values for the demo models, the bundle CLI's own
inference output for one file, and the chain driver (``chain.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import ENV, run_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".venv-monailabel"
APP = REPO_ROOT / "apps" / "monailabel"
CHAIN = Path(__file__).with_name("chain.py")
# few samples and epochs: the tests check the serving path, not the models' quality
DEMO = {
    "ctclip_lora": ("--demo_num_samples", "40"),
    "cleft_cxr": ("--demo_num_samples", "80"),
    "report_gen": ("--demo_num_samples", "60"),
    "frozen_projection": ("--demo_num_samples", "120"),
}
TRAIN = {
    "ctclip_lora": [(["train", "demo"], ("--num_epochs", "1"))],
    "cleft_cxr": [(["train", "demo"], ("--num_epochs", "2"))],
    "report_gen": [
        (["train", "demo"], ("--num_epochs", "1")),
        (["train", "train_stage2", "demo"], ("--num_epochs", "1")),
    ],
    "frozen_projection": [(["train", "demo"], ("--num_epochs", "2"))],
}
# each bundle's docs' standalone inference command (inference.json, then the demo's config)
CLI_CONFIGS = {bundle: ["inference", "demo"] for bundle in DEMO}


def server_conf(roots: dict[str, Path], extra: dict[str, str] | None = None) -> dict[str, str]:
    """``--conf`` values of the app for the demo models (no spaces in a value: MONAI Label re-splits them), plus
    ``extra`` (``<bundle>.<key>: value``)."""
    conf = {"models": ",".join(roots), **(extra or {})}
    for bundle, root in roots.items():
        conf[f"{bundle}.configs"] = "demo.json"
        conf[f"{bundle}.bundle_root"] = str(root)
        conf[f"{bundle}.demo_num_samples"] = DEMO[bundle][1]
    if "frozen_projection" in roots:
        conf["frozen_projection.retrieval_manifest"] = str(retrieval_manifest(roots["frozen_projection"]))
    return conf


def retrieval_manifest(root: Path) -> Path:
    """The reports frozen_projection retrieves from in the tests: its demo's manifest (reports of 120 studies)."""
    return root / "demo_data" / "manifest.csv"


def cli_output(
    bundle: str, root: Path, image: str, out: Path, class_names: list[str] | None = None, extra: tuple[str, ...] = ()
) -> dict:
    """The bundle's own ``python -m monai.bundle run`` inference for one file, read from the file it writes
    (``extra``: more ``--key value`` overrides, the same as the server's)."""
    out.mkdir(parents=True, exist_ok=True)
    overrides: list[str] = [*DEMO[bundle], *extra]
    if bundle == "ctclip_lora":
        overrides += ["--input_files", json.dumps([image]), "--output_dir", str(out)]
        if class_names:
            overrides += ["--class_names", json.dumps(class_names)]
    elif bundle == "cleft_cxr":
        overrides += ["--input_files", json.dumps([image]), "--output_path", str(out / "predictions.json")]
        if class_names:
            overrides += ["--label_set", json.dumps(class_names)]
    elif bundle == "frozen_projection":
        (out / "manifest.csv").write_text(f"id,image\n{Path(image).name},{image}\n")
        overrides += ["--input_manifest", str(out / "manifest.csv"), "--output_dir", str(out),
                      "--retrieval_manifest", str(retrieval_manifest(root))]  # fmt: skip
    else:
        (out / "manifest.csv").write_text(f"id,image\n{Path(image).name},{image}\n")
        overrides += ["--dataset_dir", str(out), "--manifest", str(out / "manifest.csv"), "--output_dir", str(out),
                      "--output_prefix", "inference"]  # fmt: skip
    run_bundle(bundle, CLI_CONFIGS[bundle], root, *overrides)
    if bundle == "ctclip_lora":
        (path,) = out.glob("*_zero_shot.json")
        return json.loads(path.read_text())
    if bundle == "cleft_cxr":
        return json.loads((out / "predictions.json").read_text())["predictions"][0]
    if bundle == "frozen_projection":
        record = json.loads((out / "retrieval.json").read_text())
        return {"retrieval_manifest": record["retrieval_manifest"], "top_k": record["top_k"], **record["results"][0]}
    return json.loads((out / "inference.jsonl").read_text().splitlines()[0])


def run_chain(plan: dict, work: Path, netns: str | None = None, timeout: int = 1500) -> dict:
    """Run ``chain.py`` on ``plan`` (inside network namespace ``netns`` when given) and return its results."""
    work.mkdir(parents=True, exist_ok=True)
    plan = {"work": str(work), "app": str(APP), **plan}
    (work / "plan.json").write_text(json.dumps(plan))
    args = [sys.executable, str(CHAIN), str(work / "plan.json"), str(work / "results.json")]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    env = {**ENV, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if not (work / "results.json").is_file():
        pytest.fail(
            f"chain.py wrote no results (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    if done.returncode != 0:
        pytest.fail(f"chain.py failed (exit {done.returncode}):\n{done.stderr[-5000:]}")
    return json.loads((work / "results.json").read_text())


def assert_neighbours_equal(served: dict, cli: dict, tolerance: float = 1e-5) -> None:
    """The served nearest reports equal the CLI's: the same reports in the same order, scores to ``tolerance``."""
    assert [(n["rank"], n["id"], n["report"]) for n in served["neighbours"]] == [
        (n["rank"], n["id"], n["report"]) for n in cli["neighbours"]
    ]
    for got, want in zip(served["neighbours"], cli["neighbours"]):
        assert got["score"] == pytest.approx(want["score"], abs=tolerance), want["id"]


def assert_probabilities_equal(served: dict, cli: dict, tolerance: float = 1e-5) -> None:
    """The served probabilities equal the CLI's, class by class, in the same order."""
    assert list(served["probabilities"]) == list(cli["probabilities"])
    for name, value in cli["probabilities"].items():
        assert served["probabilities"][name] == pytest.approx(value, abs=tolerance), name
