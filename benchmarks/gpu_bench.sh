#!/usr/bin/env bash
# The GPU benchmark, in one call on a lent machine (torch preinstalled there; chexnet from src/ via PYTHONPATH).
# Writes logs and markdown tables to $OUT (or /tmp/gpu-bench). Usage: bash benchmarks/gpu_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
python3 benchmarks/bench_loader.py --images 3000 --workers 8 --passes 2 --work /tmp/bl 2>&1 | tee "$OUT/loader.txt"
python3 benchmarks/bench_train.py --archs densenet121,vgg16,resnet50 --precisions fp32,bf16 --nprocs 1 --steps 40 \
  --warmup 10 --workers 4 --images 1500 --markdown "$OUT/train.md" --work /tmp/bt 2>&1 | grep -v "^epoch" | tee "$OUT/train.txt"
python3 benchmarks/bench_train.py --archs densenet121 --precisions bf16 --nprocs 1 --batch 64 --steps 30 --warmup 8 \
  --workers 8 --channels-last --images 4000 --markdown "$OUT/train.md" --work /tmp/bt64 2>&1 | grep -v "^epoch" | tee -a "$OUT/train.txt"
