"""bf16 training of ctclip_lora: autocast in the forward pass and no GradScaler (bf16 has float32's exponent range)."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from common.methods.ctclip.training import BF16AutocastInferer

CONFIGS = "bundles/ctclip_lora/configs"


def _demo_trainer(repo_root, tmp_path, bf16: bool):
    parser = ConfigParser()
    parser.read_config([str(repo_root / CONFIGS / "train.json"), str(repo_root / CONFIGS / "demo.json")])
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "autocast_dtype": "bfloat16" if bf16 else "",
            "demo_num_samples": 12,
            "validate_before_training": False,
        }
    )
    return parser.get_parsed_content("train#trainer")


def test_bf16_trainer_built_from_the_config_has_no_grad_scaler(repo_root, tmp_path):
    trainer = _demo_trainer(repo_root, tmp_path, bf16=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: engine.terminate())  # one step (0 fails)
    trainer.run()  # MONAI's Trainer.run builds its GradScaler whenever amp is on
    assert trainer.scaler is None and not trainer.amp
    assert isinstance(trainer.inferer, BF16AutocastInferer) and trainer.inferer.enabled


def test_the_inferer_runs_the_network_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    network = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    out = BF16AutocastInferer()(x, network)
    expected = torch.nn.functional.linear(x.bfloat16(), network.weight.bfloat16(), network.bias.bfloat16()).float()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.equal(out, network(x))  # bf16 rounding is visible, so the autocast did happen
    dict_out = BF16AutocastInferer()({"image": x}, lambda batch: {"latents": network(batch["image"]), "n": 3})
    assert dict_out["latents"].dtype == torch.float32 and dict_out["n"] == 3
    torch.testing.assert_close(BF16AutocastInferer(enabled=False)(x, network), network(x), rtol=0, atol=0)
