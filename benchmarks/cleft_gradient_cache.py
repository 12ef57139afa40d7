"""Peak memory of one CLEFT stage-1 step at an effective batch of 256: gradient cache vs plain, same model.

Each mode runs in its own fresh process (so peaks do not mix); the step's memory is the process's peak resident
memory (``ru_maxrss``) minus its resident memory right before the step, i.e. activations + gradients + optimizer
work space. On a GPU the same script reports ``torch.cuda.max_memory_allocated``. The model is a reduced CLEFT
(DINOv2-style ViT and GPT-2 with LoRA, sizes below) so the plain batch of 256 fits on a CPU; the parameter
gradients of the two modes are compared too (they must agree). Writes
``benchmarks/results/cleft_gradient_cache.{json,md}``.

    python benchmarks/cleft_gradient_cache.py            # batch 256, chunks of 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
        loss_function=CLEFTContrastiveLoss(),
        prepare_batch=CLEFTPrepareBatch(model.text_encoder, names),
        decollate=False,
        iteration_update=GradientCacheIteration(chunk_size) if mode == "gradient_cache" else None,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before_kb = _rss_kb()
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    save_file(
        {n: p.grad.detach().cpu().contiguous() for n, p in model.named_parameters() if p.grad is not None}, grads_out
    )
    result = {"mode": mode, "seconds": seconds, "step_peak_mib": (peak_kb - before_kb) / 1024, "device": device.type}
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--_child", default="")
    parser.add_argument("--_grads", default="")
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_step(args._child, args.batch_size, args.chunk_size, args._grads)))
        return {}

    from safetensors.torch import load_file

    runs, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("plain", "gradient_cache"):
            out = os.path.join(tmp, f"{mode}.safetensors")
            command = [
                sys.executable,
                __file__,
                "--_child",
                mode,
                "--_grads",
                out,
                "--batch_size",
                str(args.batch_size),
                "--chunk_size",
                str(args.chunk_size),
            ]
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
            grads[mode] = load_file(out)
    max_diff = max((grads["plain"][k] - grads["gradient_cache"][k]).abs().max().item() for k in grads["plain"])
    max_grad = max(g.abs().max().item() for g in grads["plain"].values())
    key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in runs["plain"] else "step_peak_mib"
    results = {
        "effective_batch": args.batch_size,
        "chunk_size": args.chunk_size,
        "model": {"vit": VIT, "gpt2": GPT2, "lora_rank": 8, "embed_dim": 128, "caption_tokens": "about 12"},
        "runs": runs,
        "memory_ratio_gradient_cache_over_plain": runs["gradient_cache"][key] / runs["plain"][key],
        "time_ratio_gradient_cache_over_plain": runs["gradient_cache"]["seconds"] / runs["plain"]["seconds"],
        "max_abs_grad_diff": max_diff,
        "max_abs_grad": max_grad,
        "memory_measure": key,
        "torch": torch.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    from common.data.atomic_io import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(results, indent=2) + "\n", RESULTS / "cleft_gradient_cache.json")
    p, g = runs["plain"], runs["gradient_cache"]
    lines = [
        f"# CLEFT gradient cache: one step at an effective batch of {args.batch_size} (chunks of {args.chunk_size})",
        "",
        (
            f"Device: {p['device']}; memory measure: {key} (each mode in a fresh process); reduced CLEFT "
            f"(ViT {VIT['hidden_size']}x{VIT['num_hidden_layers']} at {VIT['image_size']} px, GPT-2 "
            f"{GPT2['n_embd']}x{GPT2['n_layer']} with LoRA r=8)."
        ),
        "",
        "| mode | step memory (MiB) | step time (s) |",
        "|---|---:|---:|",
        f"| plain (whole batch with a graph) | {p[key]:.0f} | {p['seconds']:.2f} |",
        f"| gradient cache | {g[key]:.0f} | {g['seconds']:.2f} |",
        "",
        (
            f"Memory ratio (gradient cache / plain): **{results['memory_ratio_gradient_cache_over_plain']:.2f}**; "
            f"time ratio: {results['time_ratio_gradient_cache_over_plain']:.2f} (the cache embeds the batch twice)."
        ),
        f"Largest parameter-gradient difference between the modes: {max_diff:.2e} (largest gradient {max_grad:.2e}).",
        "",
    ]
    write_text_atomic("\n".join(lines), RESULTS / "cleft_gradient_cache.md")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
