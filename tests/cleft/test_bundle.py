"""The cleft_cxr configs run end to end from the repository root with MONAI's runner on CPU, and the demo learns:
zero-shot accuracy above chance after stage 1, higher after stage 2 (prompt tuning), on the held-out test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle, run_command
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = "bundles/cleft_cxr/configs"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
CHANCE = 1 / 5


def _run(args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return run_command(args, timeout=timeout)


def _bundle_run(root: Path, *configs: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return run_bundle("cleft_cxr", (*configs, "demo"), root, *extra)


def _metrics(root: Path, name: str) -> dict:
    return json.loads((root / "eval" / f"{name}_metrics.json").read_text())


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """One stage-1 demo run shared by the tests of this module."""
    root = tmp_path_factory.mktemp("cleft_bundle")
    _bundle_run(root, "train")
    return root


@pytest.mark.slow
def test_stage1_saves_only_trained_weights_and_a_peft_folder(stage1):
    with safe_open(str(stage1 / "models" / "model.safetensors"), framework="pt") as handle:
        keys, header = set(handle.keys()), handle.metadata()
    text_keys = {k for k in keys if k.startswith("text_encoder.")}
    assert text_keys and all("lora_" in k for k in text_keys)  # the frozen LM is not in the checkpoint
    assert {"image_projection.weight", "text_projection.weight", "logit_scale.log_scale"} <= keys
    assert header["score_name"] == "val_zero_shot" and len(header["base_model_fingerprint"]) == 64
    assert (stage1 / "models" / "text_lora" / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((stage1 / "models" / "text_lora" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"].startswith("medvlm-base:")  # a random LM built from a config
    assert any((stage1 / "logs").iterdir()), "TensorBoard events written"


@pytest.mark.slow
def test_export_merges_the_lora_into_a_plain_model(stage1):
    _bundle_run(stage1, "train", "export")
    export = stage1 / "models" / "export"
    with safe_open(str(export / "model.safetensors"), framework="pt") as handle:
        keys, header = set(handle.keys()), handle.metadata()
    assert header["merged_lora"] == "true" and not any("lora_" in k for k in keys)
    assert (export / "text_model" / "config.json").is_file() and (export / "image_model" / "config.json").is_file()


@pytest.mark.slow
def test_demo_learns_zero_shot_then_prompt_tuning_improves(stage1):
    _bundle_run(stage1, "train", "evaluate")
    zero_shot = _metrics(stage1, "zero_shot")
    assert zero_shot["accuracy"] > CHANCE + 0.15, zero_shot  # above chance after stage 1
    assert zero_shot["auroc"] > 0.7, zero_shot
    assert (stage1 / "eval" / "zero_shot_confusion_matrix.png").stat().st_size > 1000
    probe = json.loads((stage1 / "eval" / "linear_probe_metrics.json").read_text())["results"]
    assert set(probe) == {"1%", "10%", "100%"} and probe["100%"]["accuracy"] > CHANCE + 0.2
    assert probe["1%"]["num_train"] < probe["10%"]["num_train"] < probe["100%"]["num_train"]

    _bundle_run(stage1, "train", "prompt_tuning")
    with safe_open(str(stage1 / "models" / "prompt_tuned.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "context.context" in keys and not any(k.startswith("clip.text_") for k in keys)  # LLM + text head frozen
    tuned = _metrics(stage1, "prompt_tuned")
    assert tuned["num_samples"] == zero_shot["num_samples"]  # the same held-out test split
    assert tuned["accuracy"] > zero_shot["accuracy"] + 0.05, (zero_shot["accuracy"], tuned["accuracy"])

    _bundle_run(
        stage1,
        "train",
        "inference",
        extra=(
            "--prompt_checkpoint",
            str(stage1 / "models" / "prompt_tuned.safetensors"),
            "--label_set",
            "['Edema','Cardiomegaly']",
        ),
    )
    predictions = json.loads((stage1 / "eval" / "predictions.json").read_text())
    assert predictions["class_names"] == ["Edema", "Cardiomegaly"] and len(predictions["predictions"]) > 0
    first = predictions["predictions"][0]["probabilities"]
    assert abs(sum(first.values()) - 1) < 1e-4


@pytest.mark.slow
def test_multi_gpu_config_with_gradient_cache_on_two_cpu_processes(tmp_path):
    from common.data.synthetic_cxr import make_synthetic_cxr_dataset

    demo = json.loads((ROOT / CONFIGS / "demo.json").read_text())
    train = json.loads((ROOT / CONFIGS / "train.json").read_text())
    make_synthetic_cxr_dataset(
        tmp_path / "demo_data",
        num_samples=demo["demo_num_samples"],
        class_names=train["class_names"],
        image_size=demo["demo_image_size"],
        seed=0,
    )
    result = run_bundle(
        "cleft_cxr",
        ("train", "multi_gpu_train", "demo"),
        tmp_path,
        "--num_epochs",
        "2",
        "--dist_backend",
        "gloo",
        "--gradient_cache_chunk_size",
        "8",
        "--batch_size",
        "16",
        launcher=TORCHRUN_2,
    )
    assert (tmp_path / "models" / "model.safetensors").is_file()
    assert (tmp_path / "models" / "model_final.safetensors").is_file()
    assert (tmp_path / "models" / "text_lora" / "adapter_model.safetensors").is_file()
    assert result.stdout.count("Epoch[2] Metrics -- val_zero_shot") >= 1


@pytest.mark.slow
def test_class_name_not_in_the_label_set_is_a_named_error(tmp_path):
    from common.data.synthetic_cxr import make_synthetic_cxr_dataset

    train = json.loads((ROOT / CONFIGS / "train.json").read_text())
    manifest = make_synthetic_cxr_dataset(tmp_path / "data", num_samples=20, class_names=train["class_names"])
    files = ",".join(f"'{CONFIGS}/{c}.json'" for c in ("train", "demo"))
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"[{files}]",
        "--bundle_root",
        str(tmp_path),
        "--manifest",
        str(manifest),
        "--class_names",
        "['Edema','Pneumothorax']",
    ]
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert "Pneumothorax" in result.stderr and "missing" in result.stderr, result.stderr[-2000:]
