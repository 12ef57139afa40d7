"""The report_gen bundle's configs run end to end from the repository root on CPU, and the demo learns.

Each stage runs as ``python -m monai.bundle run`` in a subprocess with ``--bundle_root`` in a temporary folder
(demo data, models and eval files go there, not into the repository).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle
from safetensors import safe_open

CONFIGS = "bundles/report_gen/configs"


def _run(
    repo_root: Path, configs: list[str], bundle_root: Path, *overrides: str, launcher: tuple[str, ...] = ()
) -> None:
    run_bundle("report_gen", configs, bundle_root, *overrides, launcher=launcher)


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_demo(repo_root, tmp_path_factory):
    """Untrained evaluation, stage 1, stage 2 and trained evaluation of the demo, in one bundle root."""
    root = tmp_path_factory.mktemp("report_gen_demo")
    _run(repo_root, ["train.json", "evaluate.json", "demo.json"], root, "--load_checkpoint", "False")
    _run(repo_root, ["train.json", "demo.json"], root)
    _run(repo_root, ["train.json", "train_stage2.json", "demo.json"], root)
    _run(repo_root, ["train.json", "evaluate.json", "demo.json"], root)
    return root


@pytest.mark.slow
def test_demo_bleu4_after_two_stages_is_clearly_above_the_untrained_model(trained_demo):
    before = _metrics(trained_demo / "eval" / "test_generated_untrained_metrics.json")
    after = _metrics(trained_demo / "eval" / "test_generated_stage2_metrics.json")
    assert before["num_reports"] == after["num_reports"] > 40  # the whole held-out test split
    print(
        f"demo test BLEU-4 untrained {before['BLEU-4']:.4f} -> after stage 1 + 2 {after['BLEU-4']:.4f}; "
        f"CIDEr {before['CIDEr']:.3f} -> {after['CIDEr']:.3f}"
    )
    assert after["BLEU-4"] > before["BLEU-4"] + 0.1
    assert after["CIDEr"] > before["CIDEr"] + 0.5
    records = _records(trained_demo / "eval" / "test_generated_stage2.jsonl")
    assert len(records) == after["num_reports"] and set(records[0]) == {"id", "generated", "reference"}

    # it reads the images: it beats writing the most common training report for every test study
    from collections import Counter

    from common.methods.report_gen.data import load_report_rows
    from common.metrics.nlg import nlg_metrics

    manifest = trained_demo / "demo_data" / "manifest.csv"
    train = load_report_rows(manifest, trained_demo / "demo_data", "train")
    most_common = Counter(r["report"] for r in train).most_common(1)[0][0]
    baseline = nlg_metrics([most_common] * len(records), [r["reference"] for r in records], meteor=False)
    print(f"most-common-report baseline: BLEU-4 {baseline['BLEU-4']:.4f}, CIDEr {baseline['CIDEr']:.3f}")
    assert after["BLEU-4"] > baseline["BLEU-4"] + 0.05
    assert after["CIDEr"] > baseline["CIDEr"] + 0.5


@pytest.mark.slow
def test_checkpoints_hold_only_projector_and_lora(trained_demo):
    stage1, stage2 = trained_demo / "models" / "stage1", trained_demo / "models" / "stage2"
    assert sorted(p.name for p in stage1.iterdir()) == ["base_models.json", "projector.safetensors"]
    assert (stage2 / "llm_lora" / "adapter_config.json").is_file()
    with safe_open(str(stage2 / "llm_lora" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    with safe_open(str(stage2 / "projector.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]
    assert json.loads((stage2 / "llm_lora" / "adapter_config.json").read_text())["r"] == 8
    best = json.loads((trained_demo / "models" / "stage2_best" / "base_models.json").read_text())
    assert best["epoch"] == 16 and best["BLEU-4"] > 0.1  # the one validation of the demo, at its last epoch


@pytest.mark.slow
def test_reloaded_checkpoint_generates_what_the_trained_model_generated(repo_root, trained_demo):
    # the trainer's last validation generated with the model in memory; a fresh process reloads the checkpoint
    _run(
        repo_root,
        ["train.json", "evaluate.json", "demo.json"],
        trained_demo,
        "--validate#split",
        "val",
        "--validate#max_rows",
        "32",
        "--eval_name",
        "reloaded_val",
    )
    in_memory = _records(trained_demo / "eval" / "val_generated_stage2.jsonl")
    reloaded = _records(trained_demo / "eval" / "test_generated_reloaded_val.jsonl")
    assert [r["id"] for r in reloaded] == [r["id"] for r in in_memory]
    assert [r["generated"] for r in reloaded] == [r["generated"] for r in in_memory]
    # inference (images only, no references) gives the same reports as evaluation
    _run(repo_root, ["inference.json", "demo.json"], trained_demo, "--inference_split", "test")
    inferred = {r["id"]: r["generated"] for r in _records(trained_demo / "eval" / "inference.jsonl")}
    evaluated = {r["id"]: r["generated"] for r in _records(trained_demo / "eval" / "test_generated_stage2.jsonl")}
    assert inferred == evaluated
    # merge-and-export writes plain Hugging Face folders (LoRA merged into the LLM) and the projector
    _run(repo_root, ["train.json", "evaluate.json", "export.json", "demo.json"], trained_demo)
    export = trained_demo / "models" / "export"
    assert (export / "llm" / "model.safetensors").is_file() and (export / "vision" / "model.safetensors").is_file()
    assert (export / "projector.safetensors").is_file() and not (export / "llm_lora").exists()


@pytest.mark.slow
def test_multi_gpu_configs_run_with_two_cpu_processes(repo_root, trained_demo):
    _run(
        repo_root,
        ["train.json", "demo.json", "multi_gpu_train.json"],
        trained_demo,
        "--num_epochs",
        "1",
        "--val_interval",
        "1",
        "--stage_ckpt_dir",
        str(trained_demo / "models" / "ddp"),
        launcher=TORCHRUN_2,
    )
    assert (trained_demo / "models" / "ddp" / "projector.safetensors").is_file()
    metrics = _metrics(trained_demo / "eval" / "val_generated_stage1_metrics.json")
    assert metrics["num_reports"] == 32  # both ranks' halves gathered
    # two-process evaluation of the stage-2 checkpoint gives the single-process reports
    _run(repo_root, ["train.json", "evaluate.json", "multi_gpu_evaluate.json", "demo.json"], trained_demo,
         "--eval_name", "ddp", launcher=TORCHRUN_2)  # fmt: skip
    two_ranks = {r["id"]: r["generated"] for r in _records(trained_demo / "eval" / "test_generated_ddp.jsonl")}
    one_rank = {r["id"]: r["generated"] for r in _records(trained_demo / "eval" / "test_generated_stage2.jsonl")}
    assert two_ranks == one_rank


def test_metadata_verifies(repo_root):
    from monai.bundle import verify_metadata

    verify_metadata(  # raises jsonschema's ValidationError on a bad field
        meta_file=str(repo_root / CONFIGS / "metadata.json"),
        filepath=str(repo_root / "schemas" / "meta_schema_20240725.json"),
    )
