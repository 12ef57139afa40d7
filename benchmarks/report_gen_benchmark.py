"""Report generator benchmark: generation speed (batched vs one at a time, KV cache vs none) and, per training
stage, trainable parameters and peak memory of a training step. Ratios are measured in one run of this script.

Models are built from configs with random weights (a GPT-2-architecture LM and a Llama-architecture LM of a few
tens of millions of parameters, a small ViT); the numbers describe the code paths, not a 7B model. On CPU, peak
memory is the process's peak resident set size (``ru_maxrss``) measured in a fresh subprocess per stage; on CUDA
it is ``torch.cuda.max_memory_allocated``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/report_gen_benchmark.py            # writes benchmarks/results/report_gen_*.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.data.atomic_io import write_text_atomic
from common.data.report_tokenization import IGNORE_INDEX
from common.methods.report_gen.model import ReportGenerator
from common.methods.report_gen.stages import configure_stage
from common.peft.lora import parameter_summary

RESULTS = Path(__file__).resolve().parent / "results"
VISION = {
    "model_type": "vit",
    "image_size": 64,
    "patch_size": 16,
    "num_channels": 1,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 8000,
    "n_positions": 512,
    "n_embd": 384,
    "n_layer": 6,
    "n_head": 6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
LLAMA = {
    "model_type": "llama",
    "vocab_size": 8000,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
NUM_VISUAL = (64 // 16) ** 2 + 1
PROMPT_WORDS = 12


def _prompt_batch(batch_size: int, report_tokens: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the collate's output: BOS, words, visual placeholders, words (+ report tokens)."""
    gen = torch.Generator().manual_seed(seed)
    prompt_len = 1 + PROMPT_WORDS + NUM_VISUAL + PROMPT_WORDS
    length = prompt_len + report_tokens
    ids = torch.randint(3, 8000, (batch_size, length), generator=gen)
    ids[:, 0] = 1
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    mask[:, 1 + PROMPT_WORDS : 1 + PROMPT_WORDS + NUM_VISUAL] = True
    ids[mask] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, prompt_len:] = ids[:, prompt_len:]
    return {
        "image": torch.rand(batch_size, 1, 64, 64, generator=gen),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image_token_mask": mask,
        "labels": labels,
    }


def _timed_generate(model, batch, new_tokens: int, use_cache: bool) -> float:
    start = time.perf_counter()
    out = model.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == new_tokens, out.shape  # EOS is suppressed: every row produces new_tokens tokens
    return elapsed


def generation_benchmark(batch_size: int, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = ReportGenerator.from_config(vision_config=VISION, llm_config=GPT2, init_seed=0).eval()
    batch = {k: v for k, v in _prompt_batch(batch_size).items() if k != "labels"}
    _timed_generate(model, {k: v[:1] for k, v in batch.items()}, 4, True)  # warm-up
    best = {"batched_kv_cache": float("inf"), "one_at_a_time_kv_cache": float("inf"), "batched_no_cache": float("inf")}
    for _ in tqdm(range(repeats), desc="generation benchmark"):
        best["batched_kv_cache"] = min(best["batched_kv_cache"], _timed_generate(model, batch, new_tokens, True))
        single = sum(
            _timed_generate(model, {k: v[i : i + 1] for k, v in batch.items()}, new_tokens, True)
            for i in range(batch_size)
        )
        best["one_at_a_time_kv_cache"] = min(best["one_at_a_time_kv_cache"], single)
        best["batched_no_cache"] = min(best["batched_no_cache"], _timed_generate(model, batch, new_tokens, False))
    tokens = batch_size * new_tokens
    speed = {k: tokens / v for k, v in best.items()}
    return {
        "llm": "gpt2 config " + json.dumps({k: GPT2[k] for k in ("n_embd", "n_layer", "vocab_size")}),
        "llm_parameters": sum(p.numel() for p in model.language_model.parameters()),
        "batch_size": batch_size,
        "new_tokens_per_report": new_tokens,
        "prompt_tokens": batch["input_ids"].shape[1],
        "decoding": "greedy, EOS suppressed (min_new_tokens = max_new_tokens)",
        "repeats (best of)": repeats,
        "tokens_per_second": speed,
        "ratio_batched_over_one_at_a_time": speed["batched_kv_cache"] / speed["one_at_a_time_kv_cache"],
        "ratio_kv_cache_over_no_cache": speed["batched_kv_cache"] / speed["batched_no_cache"],
    }


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stage_worker(stage: int, checkpointing: bool, batch_size: int, report_tokens: int) -> dict:
    """One stage's training steps in this (fresh) process: trainable parameters and peak memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = ReportGenerator.from_config(
        vision_config=VISION, llm_config=LLAMA, init_seed=0, gradient_checkpointing=checkpointing
    )
    configure_stage(model, stage, lora_rank=16, lora_alpha=16, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    model.to(device).train()
    batch = {k: v.to(device) for k, v in _prompt_batch(batch_size, report_tokens).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_bytes(device)
    start = time.perf_counter()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        optimizer.step()
    elapsed = (time.perf_counter() - start) / 3
    summary = parameter_summary(model)
    return {
        "stage": stage,
        "gradient_checkpointing": checkpointing,
        "trainable_parameters": summary.trainable,
        "total_parameters": summary.total,
        "trainable_percent": summary.percent,
        "peak_memory_MiB": _peak_bytes(device) / 2**20,
        "peak_before_steps_MiB": before / 2**20,
        "seconds_per_step": elapsed,
        "device": device.type,
    }


def stages_benchmark(batch_size: int, report_tokens: int) -> list[dict]:
    rows = []
    for stage, checkpointing in tqdm([(1, False), (2, False), (2, True)], desc="stage benchmark"):
        command = [
            sys.executable,
            __file__,
            "--stage-worker",
            str(stage),
            "--batch-size",
            str(batch_size),
            "--report-tokens",
            str(report_tokens),
        ] + (["--checkpointing"] if checkpointing else [])
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--report-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stage-worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.stage_worker:
        print(json.dumps(stage_worker(args.stage_worker, args.checkpointing, args.batch_size, args.report_tokens)))
        return
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    generation = generation_benchmark(args.batch_size, args.new_tokens, args.repeats)
    stages = stages_benchmark(args.batch_size, args.report_tokens)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "environment": environment,
        "generation": generation,
        "stages": stages,
        "stage_setup": {
            "llm": "llama config "
            + json.dumps({k: LLAMA[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}),
            "batch_size": args.batch_size,
            "report_tokens": args.report_tokens,
            "lora": "r=16 on q,k,v,o",
        },
    }
    write_text_atomic(json.dumps(result, indent=2), RESULTS / "report_gen_benchmark.json")
    speed = generation["tokens_per_second"]
    lines = [
        "# report_gen benchmark",
        "",
        (
            f"Measured in one run of `benchmarks/report_gen_benchmark.py` ({environment['device']}, {environment['threads']} thread(s), "
            f"torch {environment['torch']}). Random-weight models built from configs; see the script's docstring."
        ),
        "",
        (
            f"## Generation ({generation['llm']}, {generation['llm_parameters']:,} LLM parameters; {args.batch_size} reports x "
            f"{args.new_tokens} new tokens, greedy, prompt {generation['prompt_tokens']} tokens)"
        ),
        "",
        "| mode | tokens/s |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v:.1f} |" for k, v in speed.items()],
        "",
        f"- batched vs one at a time (both with KV cache): **{generation['ratio_batched_over_one_at_a_time']:.2f}x**",
        f"- KV cache vs none (batched): **{generation['ratio_kv_cache_over_no_cache']:.2f}x**",
        "",
        (
            f"## Training stages ({result['stage_setup']['llm']}; batch {args.batch_size}, {args.report_tokens} report tokens, "
            "LoRA r=16 on q/k/v/o)"
        ),
        "",
        "| stage | gradient checkpointing | trainable params | trainable % | peak memory (MiB) | s/step |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['stage']} | {r['gradient_checkpointing']} | {r['trainable_parameters']:,} | {r['trainable_percent']:.3f} | "
            f"{r['peak_memory_MiB']:.0f} | {r['seconds_per_step']:.2f} |"
            for r in stages
        ],
        "",
        (
            "Peak memory on CPU is the peak resident set size of a fresh process per row (model, data, three AdamW steps), "
            "so it includes the frozen weights and the Python/torch runtime; differences between rows are what the stage adds."
        ),
    ]
    write_text_atomic("\n".join(lines) + "\n", RESULTS / "report_gen_benchmark.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
