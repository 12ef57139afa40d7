"""ctclip_lora inference.json runs alone (and merged after train.json) and equals evaluate's predictions.

Without ``pretrained_path`` the base CT-CLIP is random: inference must build the same random base as training
(``init_seed``), or the adapters sit on other weights and the probabilities are noise around 0.5.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from bundle_runner import run_bundle

from common.methods.ctclip.model import CTCLIP

DEMO = ("--demo_num_samples", "40")


@pytest.mark.slow
def test_inference_twice_equals_evaluate(tmp_path):
    bundle = tmp_path / "ctclip_lora"
    run_bundle("ctclip_lora", ["train.json", "demo.json"], bundle, *DEMO, "--num_epochs", "2")
    run_bundle("ctclip_lora", ["train.json", "evaluate.json", "demo.json"], bundle, *DEMO, "--num_bootstrap", "0")
    with (bundle / "eval" / "zero_shot_predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [key[2:] for key in rows[0] if key.startswith("p_")]
    chosen = rows[:3]
    runs = []
    # inference.json alone (LoRA weights from models/model.pt), then merged after train.json
    for attempt, configs in (("standalone", ["inference", "demo"]), ("merged", ["train", "inference", "demo"])):
        out = bundle / "eval" / f"inference_{attempt}"
        inputs = json.dumps([r["id"] for r in chosen])
        run_bundle("ctclip_lora", configs, bundle, *DEMO, "--input_files", inputs, "--output_dir", str(out))
        runs.append({r["id"]: json.loads((out / f"{_stem(r['id'])}_zero_shot.json").read_text()) for r in chosen})
    for row in chosen:
        first, second = runs[0][row["id"]]["probabilities"], runs[1][row["id"]]["probabilities"]
        assert first == second  # identical across processes and forms
        for name in names:
            assert first[name] == pytest.approx(float(row[f"p_{name}"]), abs=1e-6), (row["id"], name)


def _stem(path: str) -> str:
    """The name the inference writer gives a volume: the file name without ``.nii.gz``."""
    return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gz").removesuffix(".nii")


def test_init_seed_builds_the_same_random_base_whatever_ran_before():
    tiny_ctvit = {"dim": 16, "codebook_size": 32, "image_size": 16, "patch_size": 8, "temporal_patch_size": 4,
                  "spatial_depth": 1, "temporal_depth": 1, "dim_head": 8, "heads": 2}  # fmt: skip
    tiny_bert = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 32, "max_position_embeddings": 16}  # fmt: skip
    states = []
    for warmup in (0, 7):
        torch.manual_seed(warmup)  # another global RNG state, as another order of config parsing would leave
        before = torch.random.get_rng_state()
        model = CTCLIP.from_config(tiny_ctvit, tiny_bert, dim_latent=8, init_seed=3)
        assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
