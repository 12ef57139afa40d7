"""The report generator with the other supported backbones: Swin / DINOv2 vision, Llama LLM, bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from common.methods.report_gen.model import ReportGenerator
from common.methods.report_gen.stages import configure_stage, trainable_parameter_names
from common.vision.hf_vision_encoder import HFVisionEncoder

LLAMA = {
    "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "tokens", "width"),
    [
        ({"model_type": "swin", "image_size": 32, "patch_size": 4, "num_channels": 1, "embed_dim": 8,
          "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}, 16, 16),
        ({"model_type": "dinov2", "image_size": 28, "patch_size": 14, "num_channels": 3, "hidden_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}, 4, 16),
    ],
)  # fmt: skip
def test_vision_backbones_give_last_hidden_state_tokens(config, tokens, width):
    encoder = HFVisionEncoder(config=config, drop_cls_token=config["model_type"] == "dinov2")
    size = config["image_size"]
    out = encoder(torch.rand(2, 1, size, size))  # grey input is repeated to 3 channels where the backbone wants them
    assert out.shape == (2, tokens, width) and encoder.hidden_size == width
    with pytest.raises(ValueError, match="expects 1 or"):
        encoder(torch.rand(2, 2, size, size))


def _llama_batch(num_visual: int, batch_size: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 64, (batch_size, 4 + num_visual + 6))
    ids[:, 0] = 1
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 2 : 2 + num_visual] = True
    labels = torch.full_like(ids, -100)
    labels[:, 4 + num_visual :] = ids[:, 4 + num_visual :]
    return {"image": torch.rand(batch_size, 1, 16, 16), "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "image_token_mask": mask, "labels": labels}  # fmt: skip


def test_llama_llm_with_lora_on_attention_projections():
    vision = {"model_type": "vit", "image_size": 16, "patch_size": 8, "num_channels": 1, "hidden_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
    model = ReportGenerator.from_config(vision_config=vision, llm_config=LLAMA, projector_type="mlp", init_seed=0)
    configure_stage(model, 2, lora_rank=4, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    lora = [n for n in trainable_parameter_names(model) if not n.startswith("projector.")]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    batch = _llama_batch(num_visual=5)
    model(batch)["loss"].backward()
    model.eval()
    prompt = {k: v[:, : 4 + 5] for k, v in batch.items() if k != "labels"} | {"image": batch["image"]}
    out = model.generate(prompt, num_beams=2, max_new_tokens=6, repetition_penalty=1.2)
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 6


def test_bf16_autocast_forward_is_close_to_fp32():
    vision = {"model_type": "vit", "image_size": 16, "patch_size": 8, "num_channels": 1, "hidden_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
    fp32 = ReportGenerator.from_config(vision_config=vision, llm_config=LLAMA, init_seed=0).eval()
    bf16 = ReportGenerator.from_config(vision_config=vision, llm_config=LLAMA, init_seed=0, autocast_dtype="bfloat16")
    batch = _llama_batch(num_visual=5)
    with torch.no_grad():
        reference, mixed = fp32(batch)["loss"], bf16.eval()(batch)["loss"]
    assert torch.isfinite(mixed) and abs(mixed.item() - reference.item()) < 0.05
    with pytest.raises(ValueError, match="autocast_dtype"):
        ReportGenerator.from_config(vision_config=vision, llm_config=LLAMA, autocast_dtype="fp8")


def test_default_train_config_needs_an_llm(repo_root):
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / "report_gen" / "configs" / "train.json"))
    parser["llm_path"] = ""
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def")
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("llm_path is empty and no architecture config" in m for m in chain)
    parser["llm_path"] = "/no/such/llm"
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def", lazy=False)
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("llm_path='/no/such/llm' is not a local folder" in m for m in chain)
