#!/usr/bin/env bash
# One prepared visit to a CUDA machine (see ../shared/GPU.md): correctness first, then the benchmark table.
#   run from the repository root with the wheels of GPU.md in .whl/; results land in $OUT (or ./gpu-out).
set -euo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else export PYTHONPATH=$PWD; fi
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# 1. correctness: fp32 vs bf16 loss agreement over 50 steps of imagenet256-s, compiled vs eager, grad checkpointing
timeout 300 python3 bench/gpu_train_check.py --out "$OUT" 2>&1 | tee "$OUT/check.log" || echo "check failed or timed out"
# 2. speed: the targets of issue 6 (SD-DiT-XL/2 b32 and SD-DiT-S/2 b256 in bf16, XL/2 b64 for the fraction of peak)
PEAK=${PEAK:-790}   # bf16 dense TFLOP/s of an H200 (H100 SXM: 989)
python3 -m sddit.bench --device cuda --precisions bf16 --compile --peak-tflops "$PEAK" --steps 20 --warmup 5 \
    --runs imagenet256-xl:32 imagenet256-s:256 imagenet256-xl:64 --json "$OUT/bench_bf16_compiled.json" 2>&1 | tee "$OUT/bench.md"
python3 -m sddit.bench --device cuda --precisions bf16 fp32 --peak-tflops "$PEAK" --steps 20 --warmup 5 \
    --runs imagenet256-xl:32 imagenet256-s:256 --json "$OUT/bench_eager.json" 2>&1 | tee -a "$OUT/bench.md"
