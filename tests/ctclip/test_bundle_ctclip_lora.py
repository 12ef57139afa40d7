"""The ctclip_lora bundle runs end to end from the repository root with its demo overlay, and learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_runner import TORCHRUN_2, run_bundle

CONFIGS = Path("bundles/ctclip_lora/configs")


def _run(repo_root: Path, bundle_root: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle("ctclip_lora", configs, bundle_root, *overrides)


@pytest.mark.slow
def test_demo_trains_evaluates_and_infers(repo_root, tmp_path, request):
    bundle = tmp_path / "ctclip_lora"
    train = _run(repo_root, bundle, ["train.json", "demo.json"], "--num_epochs", "15")
    assert "trainable params" in train.stdout  # the parameter summary is printed
    adapters = bundle / "models" / "adapters"
    assert (adapters / "adapter_config.json").is_file() and (bundle / "models" / "adapters.safetensors").is_file()
    assert (bundle / "models" / "adapters.safetensors").stat().st_size < 100_000

    # the same held-out test split, scored by the base model and by the LoRA-adapted model
    _run(
        repo_root,
        bundle,
        ["train.json", "evaluate.json", "demo.json"],
        "--adapter_dir",
        "",
        "--output_dir",
        str(bundle / "eval_base"),
        "--num_bootstrap",
        "50",
    )
    _run(repo_root, bundle, ["train.json", "evaluate.json", "demo.json"], "--num_bootstrap", "50")
    base = json.loads((bundle / "eval_base" / "zero_shot_metrics.json").read_text())
    tuned = json.loads((bundle / "eval" / "zero_shot_metrics.json").read_text())
    print(f"demo test-split mean AUROC: base {base['mean']['auroc']:.3f} -> LoRA {tuned['mean']['auroc']:.3f}")
    assert tuned["mean"]["auroc"] > base["mean"]["auroc"] + 0.15
    assert tuned["mean"]["auroc"] > 0.75
    assert tuned["protocol"] == "held_out_thresholds"
    low, high = tuned["bootstrap"]["mean"]["auroc"]
    assert low < tuned["mean"]["auroc"] < high
    assert "R@5" in tuned["report_to_volume_retrieval"]
    for name in ("zero_shot_per_pathology.csv", "zero_shot_predictions.csv", "roc_curves.png"):
        assert (bundle / "eval" / name).stat().st_size > 0
    assert not list((bundle / "eval").glob(".*.tmp"))

    # open-vocabulary inference on a real chest CT (NIfTI) and a real DICOM series (demo volumes without them)
    try:
        ct = request.getfixturevalue("shared_data_dir") / "ct"
        inputs = [str(ct / "totalseg_chest_cta" / "ct_cropped.nii.gz"), str(ct / "totalseg_abdomen_dicom")]
        stems = ("ct_cropped", "totalseg_abdomen_dicom")
    except pytest.skip.Exception:
        print("real CT sample data absent: inference runs on two demo volumes")
        inputs = [str(bundle / "demo_data" / "volumes" / f"synth_000{i}.nii.gz") for i in (0, 1)]
        stems = ("synth_0000", "synth_0001")
    _run(
        repo_root,
        bundle,
        ["inference.json", "demo.json"],
        "--input_files",
        json.dumps(inputs),
        "--class_names",
        json.dumps(["Pleural effusion", "Pneumothorax"]),
        "--hu_metadata_csv",
        "",
    )
    for stem in stems:
        record = json.loads((bundle / "eval" / "inference" / f"{stem}_zero_shot.json").read_text())
        assert set(record["probabilities"]) == {"Pleural effusion", "Pneumothorax"}
        assert all(0 <= p <= 1 for p in record["probabilities"].values())


@pytest.mark.slow
def test_evaluation_names_a_missing_label_column(repo_root, tmp_path):
    bundle = tmp_path / "ctclip_lora"
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in ["train.json", "evaluate.json", "demo.json"]) + "]"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--bundle_root",
        str(bundle),
        "--adapter_dir",
        "",
        "--demo_num_samples",
        "30",
        "--class_names",
        json.dumps(["Lung nodule", "Pleural effusion"]),
        "--evaluate#rows",
        "$common.data.manifest.load_manifest(@manifest, @dataset_dir, split='test', label_columns=['Lung nodule', 'Hiatal hernia'])",  # noqa: E501
    ]
    result = subprocess.run(
        cmd,
        cwd=repo_root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "Hiatal hernia" in result.stderr and "missing" in result.stderr


@pytest.mark.slow
def test_multi_gpu_overlay_runs_with_two_gloo_processes(repo_root, tmp_path):
    bundle = tmp_path / "ctclip_lora"
    # the demo data are written by rank 0 while rank 1 waits (ignite.distributed.one_rank_first)
    result = run_bundle(
        "ctclip_lora",
        ["train", "demo", "multi_gpu_train"],
        bundle,
        "--demo_num_samples",
        "60",
        "--num_epochs",
        "2",
        launcher=TORCHRUN_2,
    )
    assert (bundle / "models" / "adapters" / "adapter_config.json").is_file()
    assert result.stdout.count("trainable params") == 2  # one summary per rank
