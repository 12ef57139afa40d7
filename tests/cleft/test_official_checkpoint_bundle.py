"""A released-format CLEFT checkpoint, built from the reference tensors, through the bundle as a user runs it.

The official stage-1 and stage-2 state dicts of the reference set are saved as Lightning ``.ckpt`` files
(``state_dict`` + hyper-parameters + loop state, the unused ``local_embed`` entries included), and
``python -m monai.bundle run`` of ``evaluate.json`` / ``inference.json`` with ``--official_checkpoint`` must give the
official zero-shot predictions, probabilities and accuracy. The overlay only sets the tiny sizes of the reference
and feeds its images at their final size (the geometry steps are not part of the reference).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runner import run_command
from cleft_reference import dinov2_config, official_stage2_state_dict, reference_config, tolerances
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _released_ckpt(state: dict[str, torch.Tensor], config: dict, path: Path) -> Path:
    """The Lightning layout of the released files, with the omitted (never used) local_embed entries restored."""
    state = dict(state)
    for key, shape, dtype in config["stage1_entries_omitted_from_file"]:
        state.setdefault(key, torch.zeros(shape, dtype=getattr(torch, dtype)))
    ckpt = {
        "epoch": 49,
        "global_step": 40000,
        "pytorch-lightning_version": "2.1.2",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"completed": 49}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(1.5)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4e-5, "params": [0, 1]}]}],
        "lr_schedulers": [{"last_epoch": 40000, "base_lrs": [4e-5]}],
        "hparams_name": "kwargs",
        "hyper_parameters": dict(config["hparams_stage1"]),
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def official_run(cleft_reference_dir: Path, tmp_path_factory) -> dict:
    """Files and overrides of a bundle run on the reference images with the released-format checkpoints."""
    root = tmp_path_factory.mktemp("cleft_official")
    config = reference_config(cleft_reference_dir)
    inputs = load_file(str(cleft_reference_dir / "cleft_tiny_inputs.safetensors"))
    images = []
    for i, u8 in enumerate(inputs["image.uint8"]):  # ToTensor (/255); the bundle's normalisation does (x-0.5)/0.5
        images.append(root / f"image_{i}.npy")
        np.save(images[-1], (u8.float() / 255).numpy())
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "split", *config["class_names"]])
        for path, label in zip(images, config["zeroshot_labels"]):
            writer.writerow([str(path), "test", *[int(k == label) for k in range(len(config["class_names"]))]])
    stage1 = load_file(str(cleft_reference_dir / "cleft_tiny_stage1.safetensors"))
    lora = config["lora_config_as_built"]
    overlay = {
        "image_model_config": dinov2_config(config),
        "text_model_config": {"model_type": "gpt2", **config["gpt2_config"]},
        "tokenizer_path": str(cleft_reference_dir / "tokenizer"),
        "text_max_length": config["max_words"],
        "embed_dim": config["emb_dim"],
        "lora_rank": lora["r"],
        "lora_alpha": lora["lora_alpha"],
        "lora_dropout": lora["lora_dropout"],
        "lora_target_modules": lora["target_modules"],
        "official_unpadded_eos_quirk": True,
        "class_names": config["class_names"],
        "preprocessing": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "NumpyReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": 0},
        ],
        "input_files": [str(p) for p in images],
        "run_linear_probe": False,
        "val_batch_size": len(images),
        "num_workers": 0,
    }
    (root / "overlay.json").write_text(json.dumps(overlay))
    return {
        "root": root,
        "overlay": str(root / "overlay.json"),
        "stage1": _released_ckpt(stage1, config, root / "stage1.ckpt"),
        "stage2": _released_ckpt(official_stage2_state_dict(cleft_reference_dir), config, root / "stage2.ckpt"),
        "class_names": config["class_names"],
    }


def _run(official_run: dict, config: str, stage: str, name: str) -> Path:
    """``python -m monai.bundle run`` of train.json + ``config`` + the overlay; returns the bundle root used."""
    out = official_run["root"] / name
    configs = [
        "bundles/cleft_cxr/configs/train.json",
        f"bundles/cleft_cxr/configs/{config}.json",
        official_run["overlay"],
    ]
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    run_command(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(out)]
        + [
            "--dataset_dir",
            str(official_run["root"]),
            "--manifest",
            "manifest.csv",
            "--official_checkpoint",
            str(official_run[stage]),
        ]
    )
    return out


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_inference_gives_the_official_zero_shot_predictions(official_run, cleft_reference_dir, stage):
    out = _run(official_run, "inference", stage, f"inference_{stage}")
    rows = json.loads((out / "eval" / "predictions.json").read_text())["predictions"]
    expected = load_file(str(cleft_reference_dir / "cleft_tiny_expected.safetensors"))
    prefix = "s1" if stage == "stage1" else "s2"
    names = official_run["class_names"]
    assert [r["prediction"] for r in rows] == [names[k] for k in expected[f"{prefix}.zs.pred"].tolist()]
    probs = torch.tensor([[r["probabilities"][n] for n in names] for r in rows])
    tol = tolerances(cleft_reference_dir)
    torch.testing.assert_close(probs, expected[f"{prefix}.zs.probs"], rtol=tol["features"], atol=tol["logits"])


def test_evaluate_gives_the_official_zero_shot_accuracy(official_run, cleft_reference_dir):
    out = _run(official_run, "evaluate", "stage1", "evaluate_stage1")
    report = json.loads((out / "eval" / "zero_shot_metrics.json").read_text())
    expected = load_file(str(cleft_reference_dir / "cleft_tiny_expected.safetensors"))
    assert report["num_samples"] == len(reference_config(cleft_reference_dir)["zeroshot_labels"])
    assert report["accuracy"] == pytest.approx(expected["s1.zs.acc1"].item() / 100, abs=1e-6)
