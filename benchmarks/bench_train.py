"""Training throughput: the bare training step vs the full ``chexnet train`` loop (loader, DDP, logging).

Bare step: a fixed random batch already on the device, forward + BCE + backward + optimizer step, nothing else.
Full loop: ``chexnet train`` on a synthetic cache (made once under --work), one epoch capped at --steps
optimizer steps, no validation; img/s read from the run's metrics.jsonl (steady-state window, i.e. without the
first --warmup steps). Prints one table row per (arch, precision, processes) and optionally appends markdown.

    python benchmarks/bench_train.py --archs densenet121 --precisions fp32 --nprocs 1 --steps 6
    python benchmarks/bench_train.py --archs densenet121,vgg16,resnet50 --precisions fp32,bf16 --nprocs 1,2
    python benchmarks/bench_train.py --precisions fp32,bf16 --layouts nchw,channels_last --skip-full --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import make_cache

from chexnet.models import create_model


def bare_step_rate(arch: str, precision: str, batch: int, size: int, steps: int, warmup: int, device: str,
                   channels_last: bool, profile: bool = False) -> tuple[float, str | None]:
    """img/s of the bare step, and with ``profile`` torch.profiler's top operators (self time) of one more step."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as chexnet train does on CUDA
    model = create_model(arch, "none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, 14), device=device).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step():
        opt.zero_grad(set_to_none=True)
        if dtype is None:
            loss = loss_fn(model(x), y)
        else:
            with torch.autocast(torch.device(device).type, dtype=dtype):
                loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rate = batch * steps / (time.perf_counter() - t0)
    if not profile:
        return rate, None
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profiler(activities=activities) as prof:
        step().item()
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return rate, prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=40)


def full_loop_rate(cache: Path, work: Path, arch: str, precision: str, batch: int, size: int, steps: int,
                   warmup: int, nproc: int, workers: int, channels_last: bool) -> float:
    run = work / f"run-{arch}-{precision}-{nproc}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--arch", arch,
           "--weights", "none", "--input-size", str(size), "--batch-size", str(batch), "--precision", precision,
           "--epochs", "1", "--max-steps-per-epoch", str(steps + warmup), "--log-every", str(warmup) if warmup else "1",
           "--workers", str(workers), "--set", "eval_every=1000", "--no-progress", "--optimizer", "adam"]
    if channels_last:
        cmd.append("--channels-last")
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    # log_every=warmup: the first record covers the warmup steps, the rest is the steady state
    steady = train[1:] if len(train) > 1 else train
    return sum(r["img_per_s"] for r in steady) / len(steady)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="densenet121")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--nprocs", default="1")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=6, help="measured steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="loader processes per training process")
    ap.add_argument("--images", type=int, default=400, help="synthetic images in the benchmark cache")
    ap.add_argument("--work", default="/tmp/chexnet-bench-train")
    ap.add_argument("--channels-last", action="store_true", help="= --layouts channels_last")
    ap.add_argument("--layouts", default=None, help="comma-separated memory formats: nchw, channels_last "
                    "(default nchw)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of one bare step "
                    "per configuration")
    ap.add_argument("--skip-full", action="store_true", help="bare step only")
    ap.add_argument("--markdown", default=None, help="append a results table to this file")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = None if args.skip_full else make_cache(work, args.images)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    header = (f"device {name}, torch {torch.__version__}, {os.cpu_count()} cpus, batch {args.batch}/worker, "
              f"{args.size} px, {args.steps} measured steps after {args.warmup} warmup")
    print(header)
    layouts = (args.layouts or ("channels_last" if args.channels_last else "nchw")).split(",")
    rows = ["| arch | precision | layout | processes | bare step img/s (per process) | full loop img/s (all processes) "
            "| full / bare |", "|---|---|---|---|---|---|---|"]
    for arch in args.archs.split(","):
        for layout in layouts:
            channels_last = layout == "channels_last"
            for precision in args.precisions.split(","):
                bare, table = bare_step_rate(arch, precision, args.batch, args.size, args.steps, args.warmup,
                                             device, channels_last, args.profile)
                if table:
                    print(f"{arch} {precision} {layout}: one bare step, top operators by self time\n{table}")
                for nproc in [int(n) for n in args.nprocs.split(",")]:
                    full = float("nan")
                    if cache is not None:
                        full = full_loop_rate(cache, work, arch, precision, args.batch, args.size, args.steps,
                                              args.warmup, nproc, args.workers, channels_last)
                    ratio = full / bare  # on this CPU all processes share the cores the bare step used alone
                    row = f"| {arch} | {precision} | {layout} | {nproc} | {bare:.1f} | {full:.1f} | {ratio:.2f} |"
                    rows.append(row)
                    print(row, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n{header}\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
