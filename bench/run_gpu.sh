#!/usr/bin/env bash
# Every benchmark on one GPU, real-size configs with random weights (time and memory do not depend on the weights),
# offline. Writes <name>_h100.json into the folder given as $1 (default bench/results) and a log of all the tables.
#
#     bash bench/run_gpu.sh                  # -> bench/results/*_h100.json, bench/results/run_gpu_h100.log
#     bash bench/run_gpu.sh /tmp/results
#
# Sized to finish in about 5 minutes on one H100. Estimates from reading the code, not measured (no GPU where this was
# written); each step prints its wall time, so the first run checks them:
#   depth tower            ~1.5 min  6 3B towers at 4 shapes (448/896 px, batch 1/8), 7 calls each; most of it is
#                                    torch.compile (one compile per shape, shared by all blocks and towers)
#   inference              ~2.5 min  6 variants x 4 shapes (448/896 px, batch 1/4): 7 prefills + 4 generate calls of
#                                    16 tokens each, one 3B model built per variant
#   training               ~45 s     alignment (batch 64) and LoRA SFT (batch 8) at 448 px, 5 timed steps each
#   depth-pair generation  ~35 s     DA-V2-Small (random weights), 64 synthetic photo-sized JPEGs, naive vs batched
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
        --num-images 64 --batch-size 32 --out "$OUT/depth_generation_da_v2_small_h100.json"
    echo
    echo "all benchmarks done in $SECONDS s; results in $OUT"
} 2>&1 | tee "$LOG"
