"""Merge-and-export: the merged plain model generates what the adapter model generated."""

from __future__ import annotations

import torch

from common.methods.report_gen.checkpoint import load_report_gen_checkpoint
from common.methods.report_gen.export import export_merged
from common.methods.report_gen.model import ReportGenerator
from common.methods.report_gen.stages import configure_stage

from .conftest import tiny_generator


def test_merged_export_reloads_without_peft_and_generates_the_same(word_tokenizer, prompt_batch, tmp_path):
    model = configure_stage(tiny_generator(word_tokenizer), stage=2, lora_rank=4, lora_targets=["c_attn", "c_fc"])
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    model.eval()
    expected = model.generate(prompt_batch, max_new_tokens=10, num_beams=2)
    export_merged(model, tmp_path / "export", tokenizer=word_tokenizer, record={"llm_config": "tiny"})
    assert (tmp_path / "export" / "llm" / "model.safetensors").is_file()
    assert (tmp_path / "export" / "llm" / "tokenizer.json").is_file()

    plain = ReportGenerator.from_config(
        image_model_path=tmp_path / "export" / "vision", llm_path=tmp_path / "export" / "llm"
    )
    load_report_gen_checkpoint(plain, tmp_path / "export").eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    assert torch.equal(plain.generate(prompt_batch, max_new_tokens=10, num_beams=2), expected)
