"""Peak memory of a CT-CLIP training step: LoRA vs full fine-tuning, with and without gradient checkpointing.

Each configuration runs in a fresh subprocess: build the model (CT-CLIP architecture at a reduced size, random
weights), then two AdamW steps of the CLIP objective on a batch of volumes and reports. On CUDA the peak is
``torch.cuda.max_memory_allocated`` over the steps; on CPU it is the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the model is built) during the steps. Ratios are
taken within this one run. Usage (from the repository root)::

    OMP_NUM_THREADS=2 python benchmarks/ctclip_lora_memory.py   # -> benchmarks/results/ctclip_lora_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = [
    {"name": "full fine-tuning", "lora": False, "checkpointing": False},
    {"name": "full fine-tuning + gradient checkpointing", "lora": False, "checkpointing": True},
    {"name": "LoRA r=24 (to_q, to_kv; query, key, value)", "lora": True, "checkpointing": False},
    {"name": "LoRA r=24 + gradient checkpointing", "lora": True, "checkpointing": True},
]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(lora: bool, checkpointing: bool, args: argparse.Namespace) -> dict:
    """Runs inside the subprocess: returns peak step memory in MiB and the trainable parameter count."""
    import torch
    from transformers import BertConfig, BertModel

    from common.methods.ctclip.model import CTCLIP
    from common.methods.ctclip.training import CTCLIPLoss, apply_ctclip_lora
    from common.peft.lora import parameter_summary
    from common.vision.ctvit import CTViT

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctvit = CTViT(
        dim=args.dim,
        codebook_size=1024,
        image_size=args.image_size,
        patch_size=20,
        temporal_patch_size=10,
        spatial_depth=4,
        temporal_depth=4,
        dim_head=32,
        heads=args.dim // 32,
    )
    bert = BertModel(
        BertConfig(
            hidden_size=args.text_dim,
            num_hidden_layers=args.text_layers,
            num_attention_heads=args.text_dim // 64,
            intermediate_size=4 * args.text_dim,
            max_position_embeddings=512,
        )
    )
    h, w = ctvit.patch_height_width
    model = CTCLIP(ctvit, bert, dim_image=h * w * args.dim, dim_text=args.text_dim, dim_latent=512, keep_unused=False)
    if lora:
        model = apply_ctclip_lora(model, rank=24, alpha=48, gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.set_gradient_checkpointing(True)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = CTCLIPLoss("clip")
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": (torch.rand(args.batch_size, 1, args.depth, args.image_size, args.image_size, generator=g) * 2 - 1).to(
            device
        ),
        "input_ids": torch.randint(5, 30000, (args.batch_size, 96), generator=g).to(device),
        "attention_mask": torch.ones(args.batch_size, 96, dtype=torch.long).to(device),
    }
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS") * 1024
    for _ in range(2):  # the second step holds the optimizer state
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast_dtype == "bfloat16"):
            loss = loss_fn(model(batch))
        loss.backward()
        optimizer.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    return {
        "peak_step_mib": (peak - base) / 2**20,
        "trainable": parameter_summary(model).trainable,
        "total": parameter_summary(model).total,
        "device": device.type,
        "autocast_dtype": args.autocast_dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=160)
    parser.add_argument("--depth", type=int, default=80)
    parser.add_argument("--text_dim", type=int, default=256)
    parser.add_argument("--text_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument(
        "--autocast_dtype", default="", choices=["", "bfloat16"], help="the bundle's knob: bf16 autocast"
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "ctclip_lora_memory"))
    args = parser.parse_args()
    if args.child:
        config = json.loads(args.child)
        print("RESULT " + json.dumps(measure(config["lora"], config["checkpointing"], args)))
        return

    from tqdm import tqdm

    from common.data.atomic_io import write_json_atomic, write_text_atomic

    rows = []
    for config in tqdm(CONFIGS, desc="configurations"):
        cmd = [sys.executable, __file__, "--child", json.dumps(config)] + [
            f"--{k}={getattr(args, k)}"
            for k in ("dim", "image_size", "depth", "text_dim", "text_layers", "batch_size", "autocast_dtype")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        rows.append({**config, **result})
    full = rows[0]["peak_step_mib"]
    for row in rows:
        row["ratio_to_full_fine_tuning"] = row["peak_step_mib"] / full
    record = {
        "what": "peak memory of two AdamW steps (CLIP objective) above the built model, per configuration, one run",
        "model": {
            "ctvit_dim": args.dim,
            "volume": [args.batch_size, 1, args.depth, args.image_size, args.image_size],
            "bert_hidden": args.text_dim,
            "bert_layers": args.text_layers,
        },
        "rows": rows,
    }
    out_path = Path(args.out)
    write_json_atomic(record, out_path.with_suffix(".json"))
    lines = [
        "# CT-CLIP training-step peak memory: LoRA vs full fine-tuning (measured in one run)\n",
        f"CT-CLIP architecture at reduced size (CTViT dim {args.dim}, 4+4 layers; volumes {record['model']['volume']}; "
        f"BERT hidden {args.text_dim} x {args.text_layers}), random weights, device {rows[0]['device']}, "
        f"autocast {args.autocast_dtype or 'off'}. "
        "Peak = memory above the built model during two AdamW steps "
        + (
            "(torch.cuda.max_memory_allocated)."
            if rows[0]["device"] == "cuda"
            else "(growth of the process peak RSS, VmHWM)."
        ),
        "",
        "| configuration | trainable params | peak step memory (MiB) | ratio to full FT |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['trainable']:,} of {row['total']:,} | {row['peak_step_mib']:.0f} | {row['ratio_to_full_fine_tuning']:.2f} |"
        )
    md = "\n".join(lines) + "\n"
    write_text_atomic(md, out_path.with_suffix(".md"))
    print(md)


if __name__ == "__main__":
    main()
