#!/usr/bin/env bash
# Runs a bundle end to end on generated demo data with tiny models, on CPU, in minutes:
#   bash scripts/demo.sh [frozen_projection|ctclip_lora|cleft_cxr|report_gen]   (default: frozen_projection)
# Each step is a plain `python -m monai.bundle run` from the repository root, as a user would type it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=.venv/bin/python
[ -x "$PY" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
name=${1:-frozen_projection}
root=bundles/$name
cfg=$root/configs
[ -d "$cfg" ] || { echo "unknown bundle '$name' (no $cfg)" >&2; exit 1; }

run() {  # run <config> [<config> ...]: the bundle's configs, then the demo overlay
    local files="" f
    for f in "$@" demo; do files+="'$cfg/$f.json',"; done
    echo "==> python -m monai.bundle run --config_file \"[${files%,}]\" --bundle_root $root"
    "$PY" -m monai.bundle run --config_file "[${files%,}]" --bundle_root "$root"
}

case "$name" in
    frozen_projection)
        run train
        run train evaluate
        run inference
        echo "==> results: $root/eval/metrics.json, $root/eval/downstream.png; projections: $root/eval/inference/"
        ;;
    ctclip_lora)
        run train
        run train evaluate
        ;;
    cleft_cxr)
        run train                  # stage 1: contrastive pretraining
        run train evaluate         # zero-shot + linear probe
        run train prompt_tuning    # stage 2: context-prompt fine-tuning
        ;;
    report_gen)
        run train                  # stage 1: projector
        run train train_stage2     # stage 2: projector + LoRA
        run train evaluate         # generation and NLG metrics on the test split
        ;;
    *)
        run train
        run train evaluate
        ;;
esac
echo "==> done: metrics and plots in $root/eval/"
