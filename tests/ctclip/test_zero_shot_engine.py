"""Zero-shot engine: once-encoded scores equal the official per-pathology procedure; files are written atomically."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from id_tokenizer import IdTokenizer
from ignite.engine import Engine

from common.data.atomic_io import write_bytes_atomic
from common.methods.ctclip.inputs import check_input_files, check_pathology_names
from common.methods.ctclip.training import CTCLIPLoss, CTCLIPPrepareBatch, build_prompts
from common.methods.ctclip.zero_shot import ZeroShotIteration
from common.methods.ctclip.zero_shot_writers import ZeroShotEvalWriter

NAMES = ["Lung nodule", "Emphysema", "Pleural effusion"]


def test_once_encoded_scores_equal_official_loop(tiny_ctclip, reference_volume):
    tokenizer = IdTokenizer()
    iteration = ZeroShotIteration(CTCLIPPrepareBatch(tokenizer, "prompt_pair", NAMES, require_labels=False), NAMES)
    engine = Engine(iteration)
    engine.network, engine.non_blocking = tiny_ctclip, False
    engine.state.device, engine.state.iteration, engine.state.epoch_length = torch.device("cpu"), 1, 1
    ours = iteration(engine, {"image": reference_volume})["pred"]
    with torch.no_grad():  # the official call pattern: per pathology, 2 prompts padded to the maximum vs the image
        official = torch.zeros(2, len(NAMES))
        for i in range(2):
            for k, name in enumerate(NAMES):
                text = tokenizer(
                    [f"{name} is present.", f"{name} is not present."], padding="max_length", max_length=64
                )
                t = tiny_ctclip.encode_text(text["input_ids"], text["attention_mask"])
                v = tiny_ctclip.encode_volume(reference_volume[i : i + 1])
                official[i, k] = (tiny_ctclip.logit_scale() * (t * v).sum(-1)).softmax(0)[0]
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)


def test_prompt_pair_loss_prefers_the_right_prompt():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # "present" aligned with image 0, "absent" with image 1
    outputs = {"image_latents": image, "prompt_latents": prompts, "logit_scale": torch.tensor(10.0)}
    loss = CTCLIPLoss("prompt_pair")
    assert loss(outputs, torch.tensor([[1.0], [0.0]])) < 0.01 < loss(outputs, torch.tensor([[0.0], [1.0]]))
    assert torch.isfinite(loss(outputs, torch.tensor([[1.0], [float("nan")]])))  # unknown labels are ignored


def test_prompts_and_names():
    assert build_prompts(["A"]) == ["A is present.", "A is not present."]
    assert check_pathology_names(["Pneumothorax", "Any new finding"]) == ["Pneumothorax", "Any new finding"]
    with pytest.raises(ValueError, match="blank"):
        check_pathology_names(["A", " "])
    with pytest.raises(ValueError, match="repeats"):
        check_pathology_names(["A", "A"])
    with pytest.raises(ValueError, match="empty"):
        check_input_files([])
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        check_input_files(["nope.nii.gz"])
    with pytest.raises(ValueError, match="label column"):
        CTCLIPPrepareBatch(IdTokenizer(), "prompt_pair", ["A"])({"image": torch.zeros(1, 1, 4, 8, 8)})


def _writer(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    writer = ZeroShotEvalWriter(tmp_path, NAMES, num_bootstrap=20, retrieval_ks=(1, 5))
    labels = rng.integers(0, 2, size=(30, 3)).astype(np.float32)
    writer.parts["label"] = [torch.from_numpy(labels)]
    writer.parts["pred"] = [
        torch.from_numpy(np.clip(0.5 * labels + rng.uniform(0, 0.5, size=labels.shape), 0, 1).astype(np.float32))
    ]
    writer.parts["image_latents"] = [torch.randn(30, 8)]
    writer.parts["text_latents"] = [torch.randn(30, 8)]
    return writer


def test_writer_outputs_and_interruption_leaves_previous_files(tmp_path, monkeypatch):
    report = _writer(tmp_path).write()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "roc_curves.png",
        "zero_shot_metrics.json",
        "zero_shot_per_pathology.csv",
        "zero_shot_predictions.csv",
    ]
    assert (
        json.loads((tmp_path / "zero_shot_metrics.json").read_text())["mean"]["auroc"] == report["mean"]["auroc"] > 0.7
    )
    assert "R@5" in report["report_to_volume_retrieval"]
    before = (tmp_path / "zero_shot_metrics.json").read_bytes()

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt  # the run is killed between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        _writer(tmp_path, seed=1).write()
    assert (tmp_path / "zero_shot_metrics.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_creates_folders(tmp_path):
    path = write_bytes_atomic(b"{}", tmp_path / "a" / "b.json")
    assert path.read_bytes() == b"{}"
