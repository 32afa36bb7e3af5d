#!/usr/bin/env bash
# The GPU benchmark, in one call on a lent machine (torch preinstalled there; chexnet from src/ via PYTHONPATH).
# About 8 minutes: bare step and full `chexnet train` loop for DenseNet-121 bf16 channels-last (eager, then
# torch.compile), the loader alone, memory per batch. Writes gpu.json / gpu.md / log.txt to $OUT (or /tmp/gpu-bench).
# Usage: bash benchmarks/gpu_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
python3 benchmarks/bench_gpu.py --out "$OUT" --budget "${BUDGET:-420}" 2>&1 | grep -v "^epoch " | tee "$OUT/log.txt"
