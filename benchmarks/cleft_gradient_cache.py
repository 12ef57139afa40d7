"""Peak memory of one CLEFT stage-1 step against the effective batch (256, 288, 1024, 4096): gradient cache vs plain.

Each mode runs in its own fresh process (so peaks do not mix); the step's memory is the process's peak resident
memory (VmHWM) minus its resident memory right before the step, i.e. activations + gradients + optimizer
work space. On a GPU the same script reports ``torch.cuda.max_memory_allocated``. The model is a reduced CLEFT
(DINOv2-style ViT and GPT-2 with LoRA, sizes below) so the plain batch of 256 fits on a CPU; the parameter
gradients of the two modes are compared too (they must agree). Writes
``benchmarks/results/cleft_gradient_cache.{json,md}``.

On CPU every process runs with glibc's mmap threshold held at ``--malloc_mmap_threshold`` (its default start,
128 KiB): left dynamic, glibc raises the threshold after the first large ``free`` and from then on serves tensors
of that size from the heap, whose freed pages stay resident; the gradient cache frees one chunk's activations per
pass, so the resident set then counts freed memory of earlier passes (about 100 MiB here) that no tensor holds.
The same run measures one chunk and one gradient-cache row (``--dynamic_batch``) with the dynamic threshold too.

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


def _step(mode: str, batch_size: int, chunk_size: int, grads_out: str, image_size: int) -> dict:
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
        DINOv2Encoder.from_config(config={**VIT, "image_size": image_size}),
        CausalLMEncoder.from_config(config=GPT2, tokenizer=tokenizer, max_length=32, lora_dropout=0.0),
        embed_dim=128,
    ).to(device)
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=generator)}
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
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc dynamic"),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _uptime() -> str:
    """``uptime``'s load averages (the machine is shared: times depend on them, memory does not)."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _child(mode: str, batch_size: int, args: argparse.Namespace, grads_out: str, threshold: int) -> dict:
    """One step in a fresh process; ``threshold`` 0 leaves glibc's mmap threshold dynamic."""
    command = [sys.executable, __file__, "--_child", mode, "--_grads", grads_out]
    command += ["--batch_sizes", str(batch_size), "--chunk_size", str(args.chunk_size)]
    command += ["--image_size", str(args.image_size)]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode:
        raise RuntimeError(f"{mode} step at batch {batch_size} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 288, 1024, 4096])
    parser.add_argument("--plain_max", type=int, default=1024, help="largest batch trained plainly (RAM bound)")
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=112, help="ViT input side in pixels (a multiple of 14)")
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=128 * 1024,
        help="glibc MALLOC_MMAP_THRESHOLD_ of every step process (bytes; 0 leaves it dynamic, glibc's default)",
    )
    parser.add_argument(
        "--dynamic_batch",
        type=int,
        default=-1,
        help="gradient-cache batch also measured with glibc's dynamic threshold (-1: the largest; 0: none)",
    )
    parser.add_argument("--tiny", action="store_true", help="a smoke run (batches 32 and 64, chunk 16, 56 px)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--_child", default="")
    parser.add_argument("--_grads", default="")
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_step(args._child, args.batch_sizes[0], args.chunk_size, args._grads, args.image_size)))
        return {}
    if args.tiny:
        args.batch_sizes, args.plain_max, args.chunk_size, args.image_size = [32, 64], 64, 16, 56

    from safetensors.torch import load_file

    threshold = args.malloc_mmap_threshold
    load_before = _uptime()
    rows, dynamic = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        chunk = _child("plain", args.chunk_size, args, os.path.join(tmp, "chunk.safetensors"), threshold)
        for batch_size in args.batch_sizes:
            row = {"effective_batch": batch_size}
            out = os.path.join(tmp, f"gc{batch_size}.safetensors")
            row["gradient_cache"] = _child("gradient_cache", batch_size, args, out, threshold)
            if batch_size <= args.plain_max:
                ref = os.path.join(tmp, f"plain{batch_size}.safetensors")
                row["plain"] = _child("plain", batch_size, args, ref, threshold)
                plain, cached = load_file(ref), load_file(out)
                row["max_abs_grad_diff"] = max((plain[k] - cached[k]).abs().max().item() for k in plain)
                row["max_abs_grad"] = max(g.abs().max().item() for g in plain.values())
                assert row["max_abs_grad_diff"] <= 1e-5, f"batch {batch_size}: gradients differ by {row}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        dynamic_batch = args.batch_sizes[-1] if args.dynamic_batch < 0 else args.dynamic_batch
        if threshold and dynamic_batch and chunk["device"] == "cpu" and not args.tiny:  # glibc's dynamic threshold
            largest_batch = dynamic_batch
            dynamic["one_chunk_plain_step"] = _child("plain", args.chunk_size, args, os.path.join(tmp, "d.st"), 0)
            dynamic["gradient_cache"] = _child("gradient_cache", largest_batch, args, os.path.join(tmp, "d.st"), 0)
            dynamic["effective_batch"] = largest_batch
            dynamic["gradient_cache_vs_chunk"] = (
                dynamic["gradient_cache"]["step_peak_mib"] / dynamic["one_chunk_plain_step"]["step_peak_mib"]
            )
            print(json.dumps(dynamic), flush=True)
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
        "model": {
            "vit": {**VIT, "image_size": args.image_size},
            "gpt2": GPT2,
            "lora_rank": 8,
            "embed_dim": 128,
            "caption_tokens": "about 12",
        },
        "memory_measure": key
        + (
            " = peak resident set (VmHWM, reset via /proc/self/clear_refs before the step) minus the resident set "
            "right before it, in a fresh process per row"
            if key == "step_peak_mib"
            else ""
        ),
        "malloc_mmap_threshold": threshold or "glibc dynamic",
        "glibc_dynamic_mmap_threshold": dynamic or None,
        f"gradient_cache_memory_{largest['effective_batch']}_vs_chunk": largest["gradient_cache_vs_chunk"],
        "device": chunk["device"],
        "load": f"before: {load_before}; after: {_uptime()}",
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
            f"({os.cpu_count()} cores, **shared with other jobs**, {results['load']}; memory is per process and "
            f"unaffected, times are not); memory measure: {results['memory_measure']}; glibc mmap threshold "
            f"{results['malloc_mmap_threshold']} (bytes, fixed; see below). Reduced CLEFT (DINOv2-style ViT "
            f"{VIT['hidden_size']}x{VIT['num_hidden_layers']} at {args.image_size} px, GPT-2 "
            f"{GPT2['n_embd']}x{GPT2['n_layer']} with LoRA r=8), one SupervisedTrainer step; the loss is scored "
            f"{args.chunk_size} similarity rows at a time in gradient-cache mode (no B x B logits)."
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
            "the batch's embeddings (B x 128 float32 per tower, 2 MiB at 4096, and their gradients) and one "
            f"({args.chunk_size}, B) block of logits at a time."
        ),
        "",
    ]
    if dynamic:
        d_chunk, d_gc = dynamic["one_chunk_plain_step"][key], dynamic["gradient_cache"][key]
        same = [row for row in rows if row["effective_batch"] == dynamic["effective_batch"]]
        fixed_gc = same[0]["gradient_cache"][key] if same else float("nan")
        lines += [
            (
                "Same run, glibc's mmap threshold left dynamic (its default): one chunk "
                f"{d_chunk:.0f} MiB, gradient cache at {dynamic['effective_batch']} {d_gc:.0f} MiB = "
                f"**{dynamic['gradient_cache_vs_chunk']:.2f}x** one chunk. The difference to the fixed threshold "
                f"({d_gc - fixed_gc:+.0f} MiB for the gradient cache, "
                f"{d_chunk - chunk[key]:+.0f} MiB for one chunk) is freed memory glibc keeps resident in its heap "
                "after it raised the threshold on the first large free: no tensor holds it, and a GPU's "
                "caching allocator reuses such blocks instead (`torch.cuda.max_memory_allocated`)."
            ),
            "",
        ]
    write_text_atomic("\n".join(lines), args.out / "cleft_gradient_cache.md")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
