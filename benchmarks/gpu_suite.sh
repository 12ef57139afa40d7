#!/usr/bin/env bash
# Every benchmark in one go, for the day a GPU is lent: results under benchmarks/results/gpu/ (or --out DIR).
#
#   bash benchmarks/gpu_suite.sh                 # full sizes, on CUDA when torch sees one (budget: < 8 min on one GPU)
#   bash benchmarks/gpu_suite.sh --tiny --out D  # seconds-long sizes; runs on CPU too (tests/test_gpu_suite.py)
#   bash benchmarks/gpu_suite.sh --bf16          # bf16 autocast (the bundles' autocast_dtype) where a benchmark has it
#
# Each benchmark picks CUDA itself when torch.cuda.is_available(). Exits non-zero on the first benchmark that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=0
bf16=()
out=benchmarks/results/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --bf16) bf16=(--autocast_dtype bfloat16) ;;  # ctclip_lora and report_gen offer autocast_dtype
    --out) out="$2"; shift ;;
    *) echo "gpu_suite.sh: unknown argument '$1' (use --tiny, --bf16, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p "$out"
if [ "$tiny" = 1 ]; then
  size=(--tiny)
  ct=(--dim 32 --text_dim 64 --text_layers 1)
  zero_shot=(--num_volumes 1 --image_size 32 --depth 8 --patch_size 8 --temporal_patch_size 4)
  lora=(--batch_size 2 --image_size 40 --depth 20)  # its patches are fixed at 20 x 20 x 10
  volume_cache=(--tiny --loader_workers 0 --read_repeats 2)
else
  size=()
  ct=()
  zero_shot=()
  lora=()
  volume_cache=(--sizes 1 2 4)
fi
run() {
  echo "== $*" >&2
  start=$SECONDS
  "$python" "$@"
  echo "== done in $((SECONDS - start)) s" >&2
}
run benchmarks/frozen_projection_speed.py "${size[@]}" --out "$out"
run benchmarks/report_gen_benchmark.py "${size[@]}" "${bf16[@]}" --out "$out"
run benchmarks/cleft_gradient_cache.py "${size[@]}" --out "$out"
run benchmarks/cleft_parameters.py --out "$out"
run benchmarks/ctclip_zero_shot_speed.py "${ct[@]}" "${zero_shot[@]}" --out "$out/ctclip_zero_shot_speed"
run benchmarks/ctclip_lora_memory.py "${ct[@]}" "${lora[@]}" "${bf16[@]}" --out "$out/ctclip_lora_memory"
run benchmarks/ctclip_volume_cache.py "${volume_cache[@]}" --out "$out/ctclip_volume_cache"
run benchmarks/ctclip_zero_shot_scaling.py "${size[@]}" --out "$out/ctclip_zero_shot_scaling"
echo "results in $out" >&2
