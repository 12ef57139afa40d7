"""The parts of the bundles that take one tensor pass MONAI's ``verify_net_in_out`` and trace to eager outputs.

Each bundle's ``inference.json`` names that part ``traceable_network_def`` (the model zoo's ``net_id`` for its shape
and TorchScript checks), and ``metadata.json``'s ``network_data_format`` (``inputs.image``, ``outputs.pred``)
describes it. frozen_projection's is the trained image head of ``models/model.pt`` (the demo's widths); cleft_cxr's
is the image tower built from the config (full size for the shape check, the demo's size for the trace);
ctclip_lora's is the CTViT tower of the network that loaded ``models/model.pt`` (its LoRA adapters included) and
report_gen's the vision encoder and trained projector (soft prompts, channel first). Their metadata describes the
full-size tower; on the demo config the demo's sizes are given to the check as ``_meta_`` overrides.
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

from common.data.report_tokenization import build_word_level_tokenizer
from common.engines.checkpoint import save_model_pt, trained_state_dict
from common.methods.ctclip.adapters import ctclip_fingerprint
from common.methods.projection.heads import DualProjectionModel
from common.methods.report_gen.checkpoint import save_report_gen_checkpoint
from common.weights.fingerprint import base_record

CONFIGS = REPO_ROOT / "bundles"


def _verify_net_in_out(bundle: str, bundle_root: Path, *extra: str, overlays: tuple[str, ...] = ()) -> str:
    configs = CONFIGS / bundle / "configs"
    files = [str(configs / name) for name in ("inference.json", *overlays)]
    result = run_command(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "traceable_network_def",
         "--meta_file", str(configs / "metadata.json"), "--config_file", str(files) if overlays else files[0],
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


def _ctclip_model_pt(bundle_root: Path, *overlays: str) -> torch.nn.Module:
    """models/model.pt of CT-CLIP LoRA adapters (the config's sizes), as training writes it; adapters made non-zero."""
    network = _parsed("ctclip_lora", bundle_root, *overlays).get_parsed_content("network_lora")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.requires_grad:  # LoRA B starts at zero: a trained adapter changes the latents
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    record = base_record(ctclip_fingerprint(network))
    save_model_pt(trained_state_dict(network), bundle_root / "models" / "model.pt", record)
    return network


def test_ctclip_image_tower_is_the_trained_tower_passes_verify_net_in_out_and_traces(tmp_path):
    trained = _ctclip_model_pt(tmp_path, "demo.json")
    parser = _parsed("ctclip_lora", tmp_path, "demo.json")
    ctvit, latent = parser.get_parsed_content("ctvit_config"), parser.get_parsed_content("dim_latent")
    # metadata describes the full-size tower; the demo's sizes are given to the check as overrides
    shape = [f"{ctvit['temporal_patch_size']}*n", ctvit["image_size"], ctvit["image_size"]]
    out = _verify_net_in_out(
        "ctclip_lora", tmp_path, "--n", "2",
        "--_meta_#network_data_format#inputs#image#spatial_shape", json.dumps(shape),
        "--_meta_#network_data_format#outputs#pred#num_channels", str(latent), overlays=("demo.json",),
    )  # fmt: skip
    assert "verified with no error" in out
    tower = parser.get_parsed_content("traceable_network_def")
    lora_b = "enc_spatial_transformer.layers.0.1.to_q.lora_B.default.weight"
    trained_b = dict(trained.named_parameters())["base_model.model.visual_transformer." + lora_b]
    torch.testing.assert_close(tower.visual_transformer.get_parameter(lora_b), trained_b)  # models/model.pt's
    size, slab = ctvit["image_size"], ctvit["temporal_patch_size"]
    example, other = torch.rand(2, 1, 6 * slab, size, size) * 2 - 1, torch.rand(3, 1, 2 * slab, size, size) * 2 - 1
    _trace_equals_eager(tower, example, other)
    network = parser.get_parsed_content("network").eval()
    with torch.no_grad():  # the tower's latents are the ones inference scores
        torch.testing.assert_close(tower(other), network({"image": other})["image_latents"])


@pytest.mark.slow
def test_ctclip_image_tower_passes_verify_net_in_out_at_full_size(tmp_path):
    _ctclip_model_pt(tmp_path)  # inference.json alone: 480 x 480 in-plane, 10 slices (one slab) at n=1
    assert "verified with no error" in _verify_net_in_out("ctclip_lora", tmp_path)


def test_report_gen_soft_prompt_tower_is_the_trained_one_passes_verify_net_in_out_and_traces(tmp_path):
    # the demo's word-level tokenizer, as its training stores it (the demo LLM's vocabulary is its length)
    build_word_level_tokenizer(
        ["no acute findings", "findings of the chest x-ray :"], tmp_path / "models" / "tokenizer"
    )
    parser = _parsed("report_gen", tmp_path, "demo.json")
    trained = parser.get_parsed_content("network_def")
    with torch.no_grad():  # a trained projector: not the seeded initial one inference would rebuild
        trained.projector.proj.weight.mul_(3.0)
    base_models = parser.get_parsed_content("base_models")
    save_report_gen_checkpoint(trained, tmp_path / "models" / "stage2", base_models, model_pt=True)
    size, width = parser.get_parsed_content("image_size"), parser.get_parsed_content("llm_config")["n_embd"]
    # metadata describes the full-size tower (Swin-B at 224, OpenLLaMA-7B); the demo's sizes are given as overrides
    out = _verify_net_in_out(
        "report_gen", tmp_path,
        "--_meta_#network_data_format#inputs#image#spatial_shape", json.dumps([size, size]),
        "--_meta_#network_data_format#outputs#pred#num_channels", str(width), overlays=("demo.json",),
    )  # fmt: skip
    assert "verified with no error" in out
    parser = _parsed("report_gen", tmp_path, "demo.json")
    tower = parser.get_parsed_content("traceable_network_def")
    torch.testing.assert_close(tower.projector.proj.weight, trained.projector.proj.weight)  # models/model.pt's
    example, other = torch.rand(2, 1, size, size), torch.rand(5, 1, size, size)
    _trace_equals_eager(tower, example, other)
    network = parser.get_parsed_content("network")
    with torch.no_grad():  # what the LLM receives at the <image> positions, transposed to channel first
        torch.testing.assert_close(tower(other), network.soft_prompts(other).transpose(1, 2))
