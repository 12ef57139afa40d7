"""The parts of the bundles that take one tensor pass MONAI's ``verify_net_in_out`` and trace to eager outputs.

Each bundle's ``inference.json`` names that part ``traceable_network_def`` (the model zoo's ``net_id`` for its shape
and TorchScript checks), and ``metadata.json``'s ``network_data_format`` (``inputs.image``, ``outputs.pred``)
describes it. frozen_projection's is the trained image head of ``models/model.pt`` (the demo's widths); cleft_cxr's
is the image tower built from the config (full size for the shape check, the demo's size for the trace).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO_ROOT, run_command
from monai.bundle import ConfigParser
from monai.networks.utils import convert_to_torchscript

from common.engines.checkpoint import save_model_pt, trained_state_dict
from common.methods.projection.heads import DualProjectionModel

CONFIGS = REPO_ROOT / "bundles"


def _verify_net_in_out(bundle: str, bundle_root: Path, *extra: str) -> str:
    configs = CONFIGS / bundle / "configs"
    result = run_command(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "traceable_network_def",
         "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
         "--bundle_root", str(bundle_root), "--device", "cpu", *extra]
    )  # fmt: skip
    return result.stdout + result.stderr


def _parsed(bundle: str, bundle_root: Path, *overlays: str):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / bundle / "configs" / name) for name in ("inference.json", *overlays)])
    parser["bundle_root"] = str(bundle_root)
    return parser


def _trace_equals_eager(network: torch.nn.Module, example: torch.Tensor, other: torch.Tensor) -> None:
    network.eval()
    traced = convert_to_torchscript(network, use_trace=True, inputs=[example])
    with torch.no_grad():
        for x in (example, other):
            torch.testing.assert_close(traced(x), network(x), rtol=1e-5, atol=1e-5)


def _demo_projection_checkpoint(bundle_root: Path) -> DualProjectionModel:
    """models/model.pt of a projection model with the demo's widths, as training writes it."""
    demo = json.loads((CONFIGS / "frozen_projection" / "configs" / "demo.json").read_text())
    torch.manual_seed(0)
    model = DualProjectionModel(
        image_dim=demo["image_model_config"]["hidden_size"],  # the demo ViT's mean-pooled width
        text_dim=384,  # MiniLM
        hidden_dim=demo["projection_hidden_dim"],
        out_dim=demo["projection_dim"],
    )
    record = {"network": model.config, "base_model_fingerprint": "demo", "base_model_name_or_path": "demo"}
    save_model_pt(trained_state_dict(model), bundle_root / "models" / "model.pt", record)
    return model


def test_frozen_projection_image_head_passes_verify_net_in_out_and_traces(tmp_path):
    model = _demo_projection_checkpoint(tmp_path)
    metadata = json.loads((CONFIGS / "frozen_projection" / "configs" / "metadata.json").read_text())
    io = metadata["network_data_format"]
    assert io["inputs"]["image"]["num_channels"] == model.image_head.in_dim  # metadata describes the demo weights
    assert "verified with no error" in _verify_net_in_out("frozen_projection", tmp_path)
    head = _parsed("frozen_projection", tmp_path).get_parsed_content("traceable_network_def")
    torch.testing.assert_close(head.image_head.net[0].weight, model.image_head.net[0].weight)  # the trained weights
    width = io["inputs"]["image"]["num_channels"]
    _trace_equals_eager(head, torch.randn(4, width), torch.randn(7, width))


@pytest.mark.slow
def test_cleft_image_tower_passes_verify_net_in_out_at_full_size(tmp_path):
    out = _verify_net_in_out("cleft_cxr", tmp_path, "--n", "16")  # 224 x 224, as preprocessing crops
    assert "verified with no error" in out


def test_cleft_image_tower_traces_to_eager_outputs(tmp_path):
    parser = _parsed("cleft_cxr", tmp_path, "demo.json")
    tower = parser.get_parsed_content("traceable_network_def")
    size = parser.get_parsed_content("image_size")
    _trace_equals_eager(tower, torch.randn(2, 3, size, size), torch.randn(3, 3, size, size))


def test_verify_net_in_out_fails_when_metadata_disagrees(tmp_path):
    _demo_projection_checkpoint(tmp_path)
    configs = CONFIGS / "frozen_projection" / "configs"
    metadata = json.loads((configs / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["num_channels"] += 1
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(pytest.fail.Exception, match="output channel number"):
        run_command(
            [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "traceable_network_def",
             "--meta_file", str(tmp_path / "metadata.json"), "--config_file", str(configs / "inference.json"),
             "--bundle_root", str(tmp_path), "--device", "cpu"]
        )  # fmt: skip
