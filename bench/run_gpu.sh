#!/usr/bin/env bash
# Every benchmark on one GPU, real-size configs with random weights (time and memory do not depend on the weights),
# offline. Writes <name>_h100.json into the folder given as $1 (default bench/results) and a log of all the tables.
#
#     bash bench/run_gpu.sh                  # -> bench/results/*_h100.json, bench/results/run_gpu_h100.log
#     bash bench/run_gpu.sh /tmp/results
#
# Measured on one H100 (2026-11-25, 64 images for the last step): depth tower 56 s, inference 141 s, training 44 s,
# depth-pair generation 61 s; 313 s in all. With 256 images and the raw-model row the last step takes about 2.5 min
# (the naive loop runs ~2.7 images/s), so the whole script about 7 minutes: inside one 10-minute device command.
# The "_h100" suffix names the card this was sized for; `environment.device` in each JSON says what really ran.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

OUT="${1:-bench/results}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
mkdir -p "$OUT"
LOG="$OUT/run_gpu_h100.log"

# The real-size benchmarks silently fall back to the CPU without CUDA (hours at 3B): refuse instead.
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "run_gpu.sh needs a CUDA GPU")'

# torch.compile's Triton kernels need a host C compiler (Triton builds its launcher with it). Without one, run the eager
# rows rather than fail at the first compiled call.
COMPILE=(--compile)
if ! command -v "${CC:-cc}" >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    echo "no C compiler found: skipping the torch.compile rows" >&2
    COMPILE=()
fi

step() {
    local name="$1"
    shift
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    "$PYTHON" -m "$@"
    echo "=== $name took $((SECONDS - start)) s"
}

{
    "$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__)'
    step "depth tower" bench.bench_depth_tower --size 3b "${COMPILE[@]}" --out "$OUT/depth_tower_3b_h100.json"
    step "inference" bench.bench_inference --size 3b "${COMPILE[@]}" --image-sides 448 896 --batches 1 4 \
        --decode-tokens 16 --out "$OUT/inference_3b_h100.json"
    step "training" bench.bench_training --size 3b --steps 5 --out "$OUT/training_3b_h100.json"
    step "depth-pair generation" bench.bench_depth_generation --random-real-size --synthetic-images \
        --num-images 256 --batch-size 32 --out "$OUT/depth_generation_da_v2_small_h100.json"
    echo
    echo "all benchmarks done in $SECONDS s; results in $OUT"
} 2>&1 | tee "$LOG"
