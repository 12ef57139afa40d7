"""The report_gen bundle's configs run end to end from the repository root on CPU, and the demo learns.

Each stage runs as ``python -m monai.bundle run`` in a subprocess with ``--bundle_root`` in a temporary folder
(demo data, models and eval files go there, not into the repository).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle
from ddp_parity import split_size
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
def test_two_ranks_generate_an_odd_validation_split_as_one_process_does(repo_root, tmp_path):
    """``multi_gpu_train.json`` on 2 gloo ranks, validating an odd split (9 studies: 5 on rank 0, 4 on rank 1).

    An honest comparison needs the same weights in both runs: with learning rate 0 (and a 0 floor for the cosine
    schedule) the model keeps its seeded initialisation (DDP broadcasts rank 0's, the one-process run's), so the
    validation sees the same model in both runs and only the sharding differs. The written reports must equal the
    one-process run's line for line (dataset order), and so must their metrics.
    """
    overrides = ("--demo_num_samples", "39", "--num_epochs", "1", "--val_interval", "1")
    overrides += ("--learning_rate", "0", "--min_learning_rate", "0")
    one, two = tmp_path / "one_process", tmp_path / "two_ranks"
    _run(repo_root, ["train.json", "demo.json"], one, *overrides)
    ddp = ["train.json", "demo.json", "multi_gpu_train.json"]
    _run(repo_root, ddp, two, *overrides, "--dist_backend", "gloo", launcher=TORCHRUN_2)
    assert split_size(two / "demo_data" / "manifest.csv", "val") == 9  # odd: the shards are uneven
    assert (two / "models" / "stage1" / "projector.safetensors").is_file()
    ddp = _records(two / "eval" / "val_generated_stage1.jsonl")
    assert len(ddp) == 9  # both ranks' shards gathered
    assert ddp == _records(one / "eval" / "val_generated_stage1.jsonl")
    assert _metrics(two / "eval" / "val_generated_stage1_metrics.json") == _metrics(
        one / "eval" / "val_generated_stage1_metrics.json"
    )


@pytest.mark.slow
def test_two_rank_evaluation_of_an_odd_test_split_writes_the_one_process_reports(repo_root, trained_demo):
    """``multi_gpu_evaluate.json`` on 2 gloo ranks scores the stage-2 checkpoint on 33 test studies (odd: 17 and 16
    per rank); the same checkpoint is evaluated in one process. Reports and metrics must be equal, line for line."""
    configs = ["train.json", "evaluate.json", "demo.json"]
    _run(repo_root, configs, trained_demo, "--validate#max_rows", "33", "--eval_name", "odd_1rank")
    _run(repo_root, [*configs[:2], "multi_gpu_evaluate.json", configs[2]], trained_demo,
         "--validate#max_rows", "33", "--eval_name", "odd_2ranks", "--dist_backend", "gloo",
         launcher=TORCHRUN_2)  # fmt: skip
    one = _records(trained_demo / "eval" / "test_generated_odd_1rank.jsonl")
    two = _records(trained_demo / "eval" / "test_generated_odd_2ranks.jsonl")
    assert len(two) == 33 and two == one
    assert _metrics(trained_demo / "eval" / "test_generated_odd_2ranks_metrics.json") == _metrics(
        trained_demo / "eval" / "test_generated_odd_1rank_metrics.json"
    )


def test_metadata_verifies(repo_root):
    from monai.bundle import verify_metadata

    verify_metadata(  # raises jsonschema's ValidationError on a bad field
        meta_file=str(repo_root / CONFIGS / "metadata.json"),
        filepath=str(repo_root / "schemas" / "meta_schema_20240725.json"),
    )
