"""Peak memory of one CLEFT stage-1 step against the effective batch (256, 288, 1024, 4096): gradient cache vs plain.

Each mode runs in its own fresh process (so peaks do not mix); the step's memory is the process's peak resident
memory (``ru_maxrss``) minus its resident memory right before the step, i.e. activations + gradients + optimizer
work space. On a GPU the same script reports ``torch.cuda.max_memory_allocated``. The model is a reduced CLEFT
(DINOv2-style ViT and GPT-2 with LoRA, sizes below) so the plain batch of 256 fits on a CPU; the parameter
gradients of the two modes are compared too (they must agree). Writes
``benchmarks/results/cleft_gradient_cache.{json,md}``.

    python benchmarks/cleft_gradient_cache.py            # batches 256, 288 (72x4), 1024, 4096; chunks of 32
    python benchmarks/cleft_gradient_cache.py --tiny --out /tmp/x   # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
VIT = {
    "model_type": "dinov2_with_registers",
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "patch_size": 14,
    "image_size": 112,
    "num_register_tokens": 4,
}
GPT2 = {
    "model_type": "gpt2",
    "n_embd": 256,
    "n_layer": 4,
    "n_head": 4,
    "n_positions": 128,
    "vocab_size": 512,
    "bos_token_id": 0,
    "eos_token_id": 0,
    # no dropout, so that the two modes' gradients are comparable (other batch shapes draw other masks)
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark's CPU memory measure needs Linux")


def _reset_peak_rss() -> None:
    """Make the kernel's peak resident set size (VmHWM) restart from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _step(mode: str, batch_size: int, chunk_size: int, grads_out: str) -> dict:
    """One training step in this process; returns memory and time, writes the gradients to ``grads_out``."""
    from monai.engines import SupervisedTrainer
    from safetensors.torch import save_file

    from common.engines.gradient_cache import GradientCacheIteration
    from common.methods.cleft.losses import CLEFTContrastiveLoss
    from common.methods.cleft.model import CLEFT
    from common.methods.cleft.prepare_batch import CLEFTPrepareBatch
    from common.text.causal_lm_encoder import CausalLMEncoder, train_bpe_tokenizer
    from common.vision.dinov2_encoder import DINOv2Encoder

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = ["atelectasis", "edema", "cardiomegaly", "pleural effusion", "consolidation"]
    tokenizer = train_bpe_tokenizer([f"this is a chest x ray of a patient with {n}" for n in names], vocab_size=512)
    model = CLEFT(
        DINOv2Encoder.from_config(config=VIT),
        CausalLMEncoder.from_config(config=GPT2, tokenizer=tokenizer, max_length=32, lora_dropout=0.0),
        embed_dim=128,
    ).to(device)
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(batch_size, 3, 112, 112, generator=generator)}
    for k, name in enumerate(names):
        batch[name] = torch.tensor([int(i % len(names) == k) for i in range(batch_size)])
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch],
        network=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        # the gradient cache scores the similarity rows in chunks too: no (B, B) logits kept for backward
        loss_function=CLEFTContrastiveLoss(chunk_size=chunk_size if mode == "gradient_cache" else None),
        prepare_batch=CLEFTPrepareBatch(model.text_encoder, names),
        decollate=False,
        iteration_update=GradientCacheIteration(chunk_size) if mode == "gradient_cache" else None,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    _reset_peak_rss()  # the step's peak alone, not model building's
    before_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    save_file(
        {n: p.grad.detach().cpu().contiguous() for n, p in model.named_parameters() if p.grad is not None}, grads_out
    )
    result = {
        "mode": mode,
        "batch": batch_size,
        "seconds": seconds,
        "step_peak_mib": (peak_kb - before_kb) / 1024,
        "device": device.type,
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _child(mode: str, batch_size: int, chunk_size: int, grads_out: str) -> dict:
    command = [sys.executable, __file__, "--_child", mode, "--_grads", grads_out]
    command += ["--batch_sizes", str(batch_size), "--chunk_size", str(chunk_size)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 288, 1024, 4096])
    parser.add_argument("--plain_max", type=int, default=1024, help="largest batch trained plainly (RAM bound)")
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (batches 32 and 64, chunk 16)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--_child", default="")
    parser.add_argument("--_grads", default="")
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_step(args._child, args.batch_sizes[0], args.chunk_size, args._grads)))
        return {}
    if args.tiny:
        args.batch_sizes, args.plain_max, args.chunk_size = [32, 64], 64, 16

    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chunk = _child("plain", args.chunk_size, args.chunk_size, os.path.join(tmp, "chunk.safetensors"))
        for batch_size in args.batch_sizes:
            row = {"effective_batch": batch_size}
            out = os.path.join(tmp, f"gc{batch_size}.safetensors")
            row["gradient_cache"] = _child("gradient_cache", batch_size, args.chunk_size, out)
            if batch_size <= args.plain_max:
                ref = os.path.join(tmp, f"plain{batch_size}.safetensors")
                row["plain"] = _child("plain", batch_size, args.chunk_size, ref)
                plain, cached = load_file(ref), load_file(out)
                row["max_abs_grad_diff"] = max((plain[k] - cached[k]).abs().max().item() for k in plain)
                row["max_abs_grad"] = max(g.abs().max().item() for g in plain.values())
                assert row["max_abs_grad_diff"] <= 1e-5, f"batch {batch_size}: gradients differ by {row}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in chunk else "step_peak_mib"
    for row in rows:
        row["gradient_cache_vs_chunk"] = row["gradient_cache"][key] / chunk[key]
        if "plain" in row:
            row["gradient_cache_vs_plain"] = row["gradient_cache"][key] / row["plain"][key]
    largest = rows[-1]
    results = {
        "chunk_size": args.chunk_size,
        "one_chunk_plain_step": chunk,
        "rows": rows,
        "model": {"vit": VIT, "gpt2": GPT2, "lora_rank": 8, "embed_dim": 128, "caption_tokens": "about 12"},
        "memory_measure": key
        + (
            " = peak resident set (VmHWM, reset via /proc/self/clear_refs before the step) minus the resident set "
            "right before it, in a fresh process per row"
            if key == "step_peak_mib"
            else ""
        ),
        f"gradient_cache_memory_{largest['effective_batch']}_vs_chunk": largest["gradient_cache_vs_chunk"],
        "device": chunk["device"],
        "load": "shared with other jobs",
        "torch": torch.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    from common.data.atomic_io import write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(results, indent=2) + "\n", args.out / "cleft_gradient_cache.json")
    table = []
    for row in rows:
        g, p = row["gradient_cache"], row.get("plain")
        paper = " (the paper's 72x4)" if row["effective_batch"] == 288 else ""
        table.append(
            f"| {row['effective_batch']}{paper} | {g[key]:.0f} | **{row['gradient_cache_vs_chunk']:.2f}** | "
            f"{g['seconds']:.1f} | "
            + (
                f"{p[key]:.0f} | {p['seconds']:.1f} | {row['max_abs_grad_diff']:.1e} |"
                if p
                else "does not fit here (RAM) | | |"
            )
        )
    lines = [
        f"# CLEFT gradient cache: step memory against the effective batch (chunks of {args.chunk_size})",
        "",
        (
            f"Command: `python benchmarks/cleft_gradient_cache.py {' '.join(sys.argv[1:])}`. Device: {chunk['device']} "
            f"({os.cpu_count()} cores, **shared with other jobs**; memory is per process and unaffected, times are "
            f"not); memory measure: {results['memory_measure']}. Reduced CLEFT (DINOv2-style ViT "
            f"{VIT['hidden_size']}x{VIT['num_hidden_layers']} at {VIT['image_size']} px, GPT-2 "
            f"{GPT2['n_embd']}x{GPT2['n_layer']} with LoRA r=8), one SupervisedTrainer step."
        ),
        "",
        f"One chunk ({args.chunk_size} images + captions) trained plainly: **{chunk[key]:.0f} MiB**, "
        f"{chunk['seconds']:.2f} s.",
        "",
        "| effective batch | gradient cache step MiB | / one chunk | s | plain step MiB | s | max grad diff vs plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        (
            "Gradients are asserted equal to the plain full batch (max abs difference <= 1e-5) wherever plain "
            f"training runs (up to {args.plain_max} here; beyond it plain training needs more RAM than this shared "
            "VM has). Plain step memory grows linearly with the batch; the gradient cache's is one chunk's graph plus "
            "the batch's embeddings and its B x B similarity logits (4096^2 float32 = 64 MiB, with their gradients), "
            "so it stays near one chunk's until the logits matter."
        ),
        "",
    ]
    write_text_atomic("\n".join(lines), args.out / "cleft_gradient_cache.md")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
