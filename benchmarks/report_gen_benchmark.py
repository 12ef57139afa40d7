"""Report generator benchmark: generation speed (batched vs one at a time, KV cache vs none) and, per training
stage, trainable parameters and peak memory of a training step. Ratios are measured in one run of this script.

Models are built from configs with random weights (a GPT-2-architecture LM and a Llama-architecture LM of a few
tens of millions of parameters, a small ViT); the numbers describe the code paths, not a 7B model. On CPU, peak
memory is the process's peak resident set size (``ru_maxrss``) measured in a fresh subprocess per stage; on CUDA
it is ``torch.cuda.max_memory_allocated``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/report_gen_benchmark.py   # writes benchmarks/results/report_gen_*.{json,md}
    python benchmarks/report_gen_benchmark.py --tiny --out /tmp/x  # seconds-long smoke run
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
from transformers import LogitsProcessor, LogitsProcessorList

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


class _EndAfter(LogitsProcessor):
    """Ends each report after a length its own first token sets (``min_len`` .. ``max_len``): random-weight models
    rarely emit EOS, and users' reports differ in length. Depends on the row alone, so batching cannot change it."""

    def __init__(self, eos: int, min_len: int, max_len: int) -> None:
        self.eos, self.min_len, self.span = eos, min_len, max(1, max_len - min_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        made = input_ids.shape[1]  # with inputs_embeds, input_ids holds the generated tokens only
        if made == 0:
            return scores
        scores[:, self.eos] = -float("inf")  # no EOS before the row's length ...
        end = (self.min_len + input_ids[:, 0] % self.span) == made
        scores[end] = -float("inf")
        scores[end, self.eos] = 0.0  # ... and exactly there
        return scores


def _left_padded_prompts(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` single-row prompts of different lengths (42 .. 101 tokens): BOS, words, visual slots, words."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        tail = PROMPT_WORDS + (i * 23) % 60
        length = 1 + PROMPT_WORDS + NUM_VISUAL + tail
        ids = torch.randint(3, 8000, (1, length), generator=gen)
        ids[:, 0] = 1
        mask = torch.zeros(1, length, dtype=torch.bool)
        mask[:, 1 + PROMPT_WORDS : 1 + PROMPT_WORDS + NUM_VISUAL] = True
        ids[mask] = 0
        rows.append(
            {
                "image": torch.rand(1, 1, 64, 64, generator=gen),
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "image_token_mask": mask,
            }
        )
    return rows


def _left_pad(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch of the rows, prompts right-aligned (left padding, attention mask 0 on the padding)."""
    length = max(r["input_ids"].shape[1] for r in rows)
    batch = {
        "image": torch.cat([r["image"] for r in rows]),
        "input_ids": torch.zeros(len(rows), length, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "image_token_mask": torch.zeros(len(rows), length, dtype=torch.bool),
    }
    for b, row in enumerate(rows):
        n = row["input_ids"].shape[1]
        for key in ("input_ids", "attention_mask", "image_token_mask"):
            batch[key][b, length - n :] = row[key][0]
    return batch


def _generate(model, batch, new_tokens: int, use_cache: bool, fixed_length: bool) -> tuple[torch.Tensor, float]:
    options = {"max_new_tokens": new_tokens, "use_cache": use_cache}
    if fixed_length:  # EOS suppressed: every row produces new_tokens tokens
        options["min_new_tokens"] = new_tokens
    else:
        options["logits_processor"] = LogitsProcessorList([_EndAfter(GPT2["eos_token_id"], 16, new_tokens)])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(batch, **options)
    return out, time.perf_counter() - start


def _greedy_without_cache(model, batch, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy decoding with no KV cache: every step re-runs the LM over the whole sequence so far.

    Hugging Face ``generate`` cannot do this from ``inputs_embeds`` (transformers 5 forces ``use_cache=True`` for
    decoder-only models given embeddings), so ``ReportGenerator.generate(use_cache=False)`` still caches; this
    loop is the honest baseline. EOS is suppressed, as ``min_new_tokens`` does on the cached side.
    """
    llm = model.language_model
    embed_tokens = llm.get_input_embeddings()
    start = time.perf_counter()
    with torch.no_grad():
        embeds, mask = model.input_embeddings(batch), batch["attention_mask"]
        tokens = []
        for _ in range(new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
            logits = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
            logits = logits[:, -1].float()
            logits[:, GPT2["eos_token_id"]] = -float("inf")
            token = logits.argmax(-1)
            tokens.append(token)
            embeds = torch.cat([embeds, embed_tokens(token)[:, None].to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1), time.perf_counter() - start


def _report_tokens(ids: torch.Tensor) -> int:
    """Tokens of the reports themselves: up to and including each row's EOS (not the padding after it)."""
    eos = GPT2["eos_token_id"]
    return sum(int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else len(row) for row in ids)


def generation_benchmark(batch_sizes: list[int], new_tokens: int, kv_batch: int, repeats: int) -> dict:
    """Batched vs one at a time (reports of different lengths, left-padded prompts of different lengths), asserting
    identical greedy outputs; KV cache vs none at ``new_tokens`` fixed-length reports."""
    torch.manual_seed(0)
    model = ReportGenerator.from_config(vision_config=VISION, llm_config=GPT2, init_seed=0).eval()
    rows = _left_padded_prompts(max(batch_sizes + [kv_batch]))
    _generate(model, rows[0], 4, True, True)  # warm-up
    singles, single_s = [], [float("inf")] * len(rows)
    for _ in tqdm(range(repeats), desc="one at a time"):
        singles = []
        for i, row in enumerate(rows[: max(batch_sizes)]):
            out, elapsed = _generate(model, row, new_tokens, True, False)
            singles.append(out[0])
            single_s[i] = min(single_s[i], elapsed)
    batched = []
    for size in tqdm(batch_sizes, desc="batched"):
        batch = _left_pad(rows[:size])
        best = float("inf")
        for _ in range(repeats):
            out, elapsed = _generate(model, batch, new_tokens, True, False)
            best = min(best, elapsed)
        for b, one in enumerate(singles[:size]):  # identical greedy reports, batched or not
            assert torch.equal(out[b, : len(one)], one), f"row {b} of batch {size} differs from its one-at-a-time run"
            assert (out[b, len(one) :] == GPT2["pad_token_id"]).all(), f"row {b}: tokens after its EOS"
        tokens = _report_tokens(out)
        one_s = sum(single_s[:size])
        batched.append(
            {
                "batch_size": size,
                "report_tokens": tokens,
                "report_lengths": [min(len(o), new_tokens) for o in singles[:size]],
                "prompt_lengths": [int(r["input_ids"].shape[1]) for r in rows[:size]],
                "batched_s": best,
                "one_at_a_time_s": one_s,
                "batched_tokens_per_s": tokens / best,
                "one_at_a_time_tokens_per_s": tokens / one_s,
                "speedup": one_s / best,
                "batched_ms_per_step": best / max(len(o) for o in singles[:size]) * 1e3,
            }
        )
    batch = _left_pad(rows[:kv_batch])
    kv = {"kv_cache": float("inf"), "no_cache": float("inf")}
    for _ in tqdm(range(repeats), desc="KV cache vs none"):
        with_cache, elapsed = _generate(model, batch, new_tokens, True, True)
        kv["kv_cache"] = min(kv["kv_cache"], elapsed)
        without, elapsed = _greedy_without_cache(model, batch, new_tokens)
        kv["no_cache"] = min(kv["no_cache"], elapsed)
        assert with_cache.shape[1] == new_tokens and torch.equal(with_cache, without), (
            "the KV cache changed the reports"
        )
    return {
        "llm": "gpt2 config " + json.dumps({k: GPT2[k] for k in ("n_embd", "n_layer", "vocab_size")}),
        "llm_parameters": sum(p.numel() for p in model.language_model.parameters()),
        "decoding": "greedy; asserted identical batched vs one at a time (every row) and with vs without KV cache",
        "no_cache_baseline": "a greedy loop re-running the LM over the whole sequence each step (HF generate from "
        "inputs_embeds always caches in transformers 5)",
        "repeats (best of)": repeats,
        "max_new_tokens": new_tokens,
        "batched_vs_one_at_a_time": batched,
        "kv_batch_size": kv_batch,
        "kv_prompt_lengths": [int(r["input_ids"].shape[1]) for r in rows[:kv_batch]],
        "kv_seconds": kv,
        "kv_tokens_per_s": {k: kv_batch * new_tokens / v for k, v in kv.items()},
        "generation_batched_speedup": batched[-1]["speedup"],
        "kv_cache_speedup_128_tokens" if new_tokens == 128 else "kv_cache_speedup": kv["no_cache"] / kv["kv_cache"],
    }


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stage_worker(
    stage: int, checkpointing: bool, batch_size: int, report_tokens: int, autocast_dtype: str = ""
) -> dict:
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_dtype == "bfloat16"):
            loss = model(batch)["loss"]
        loss.backward()
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
        "autocast_dtype": autocast_dtype,
    }


def stages_benchmark(batch_size: int, report_tokens: int, autocast_dtype: str = "") -> list[dict]:
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
            f"--autocast_dtype={autocast_dtype}",
        ] + (["--checkpointing"] if checkpointing else [])
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="training-stage batch; KV-cache batch")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32], help="generation batches")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--report-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--stage-worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--autocast_dtype", default="", choices=["", "bfloat16"], help="bf16 autocast of training steps"
    )
    args = parser.parse_args()
    if args.tiny:
        args.batch_sizes, args.new_tokens, args.repeats, args.batch_size, args.report_tokens = [2, 4], 24, 1, 2, 8
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.stage_worker:
        print(
            json.dumps(
                stage_worker(
                    args.stage_worker, args.checkpointing, args.batch_size, args.report_tokens, args.autocast_dtype
                )
            )
        )
        return
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load": "shared with other jobs",
    }
    generation = generation_benchmark(args.batch_sizes, args.new_tokens, args.batch_size, args.repeats)
    stages = stages_benchmark(args.batch_size, args.report_tokens, args.autocast_dtype)
    args.out.mkdir(parents=True, exist_ok=True)
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
    write_text_atomic(json.dumps(result, indent=2), args.out / "report_gen_benchmark.json")
    kv_key = next(k for k in generation if k.startswith("kv_cache_speedup"))
    lines = [
        "# report_gen benchmark",
        "",
        (
            f"Measured in one run of `benchmarks/report_gen_benchmark.py {' '.join(sys.argv[1:])}` "
            f"({environment['device']}, {environment['machine']}, {environment['threads']} thread, torch "
            f"{environment['torch']}; the machine was **shared with other jobs**, so read the ratios, each measured "
            "back to back in this run). Random-weight models built from configs; see the script's docstring."
        ),
        "",
        (
            f"## Generation as users run it ({generation['llm']}, {generation['llm_parameters']:,} LLM parameters, "
            "greedy)"
        ),
        "",
        (
            f"Prompts of different lengths ({min(generation['kv_prompt_lengths'])}-"
            f"{max(r for g in generation['batched_vs_one_at_a_time'] for r in g['prompt_lengths'])} tokens) are "
            f"left-padded into one batch; reports end at different lengths (EOS at 16-{args.new_tokens} tokens, set "
            "per row by its first token). The benchmark **asserts** that every batched report equals the same row "
            "generated alone, token for token, and that the KV cache changes no token. tokens/s counts report tokens "
            "(to each row's EOS), so the batched side pays for the padding of rows that finished early."
        ),
        "",
        "| batch | report tokens | one at a time tokens/s | batched tokens/s | **speed-up** | batched ms per step |",
        "|---|---|---|---|---|---|",
        *[
            f"| {g['batch_size']} | {g['report_tokens']} | {g['one_at_a_time_tokens_per_s']:.0f} | "
            f"{g['batched_tokens_per_s']:.0f} | **{g['speedup']:.2f}x** | {g['batched_ms_per_step']:.1f} |"
            for g in generation["batched_vs_one_at_a_time"]
        ],
        "",
        (
            f"KV cache vs none: batch {generation['kv_batch_size']}, left-padded prompts "
            f"{min(generation['kv_prompt_lengths'])}-{max(generation['kv_prompt_lengths'])} tokens, exactly "
            f"{args.new_tokens} new tokens per row (EOS suppressed): "
            f"{generation['kv_tokens_per_s']['kv_cache']:.0f} vs {generation['kv_tokens_per_s']['no_cache']:.0f} "
            f"tokens/s = **{generation[kv_key]:.2f}x**. The no-cache side is a greedy loop that re-runs the LM over "
            "the whole sequence every step: transformers 5 forces `use_cache=True` in `generate` from "
            "`inputs_embeds`, so `ReportGenerator.generate(use_cache=False)` still caches (the bundle's `use_cache` "
            "knob has no effect on this transformers)."
        ),
        "",
        (
            f"## Training stages ({result['stage_setup']['llm']}; batch {args.batch_size}, {args.report_tokens} "
            "report tokens, LoRA r=16 on q/k/v/o)"
        ),
        "",
        "| stage | gradient checkpointing | trainable params | trainable % | peak memory (MiB) | s/step |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['stage']} | {r['gradient_checkpointing']} | {r['trainable_parameters']:,} | "
            f"{r['trainable_percent']:.3f} | {r['peak_memory_MiB']:.0f} | {r['seconds_per_step']:.2f} |"
            for r in stages
        ],
        "",
        (
            "Peak memory on CPU is the peak resident set size of a fresh process per row (model, data, three AdamW "
            "steps), so it includes the frozen weights and the Python/torch runtime; differences between rows are "
            "what the stage adds."
        ),
    ]
    write_text_atomic("\n".join(lines) + "\n", args.out / "report_gen_benchmark.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
