"""One-GPU benchmark (issue 11): DenseNet-121 bf16 channels-last, bare step vs the full ``chexnet train`` loop.

Stages, each printed as it finishes and written to OUT/gpu.json and OUT/gpu.md (the whole script must fit one
lent-machine call, ~8 minutes, so every stage is bounded and the slow ``torch.compile`` stages come last):

1. bare step, eager: a fixed random batch already on the GPU (224 px, bf16 autocast, channels-last), forward +
   BCE + backward + fused Adam; img/s, model FLOP utilisation (17 GFLOP per 224 px training image, against the
   dense bf16 peak of an H100/H200, 989 TFLOP/s), peak memory; per batch size;
2. loader alone: the train split of a synthetic 256 px cache (whole rows + flips, the chexnet recipe), pinned,
   N workers: samples/s;
3. full loop, eager: ``chexnet train`` (loader, uint8 rows to the GPU, resize 256 -> 224 + normalisation on the
   GPU, the step, per-window loss all-reduce and logging), img/s of the steady-state log windows;
4. the same two with ``torch.compile``.

    PYTHONPATH=src python3 benchmarks/bench_gpu.py --out /tmp/gpu-bench
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

GFLOP_PER_IMAGE = 17.0  # DenseNet-121 training (forward + backward) per 224 px image
PEAK_TFLOPS = 989.0  # dense bf16, H100 SXM / H200


def bare_step(arch: str, batch: int, steps: int, warmup: int, compile_: bool) -> dict:
    from chexnet.models import create_model

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = create_model(arch, "none").cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    net = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, 14), device="cuda").float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(net(x).float(), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    rate = batch * steps / (start.elapsed_time(end) / 1000)
    out = {"arch": arch, "batch": batch, "compiled": compile_, "img_per_s": rate,
           "mfu": rate * GFLOP_PER_IMAGE / 1e3 / PEAK_TFLOPS, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "warmup_s": warm_s}
    del model, net, opt, x
    torch.cuda.empty_cache()
    return out


def loader_rate(cache: Path, batch: int, workers: int, seconds: float = 20.0) -> dict:
    from torch.utils.data import DataLoader

    from chexnet.data.cache import load_cache
    from chexnet.data.dataset import open_split

    _, index, meta = load_cache(cache)
    ds = open_split(cache, index, meta, "train", "train", 224, "resize")
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=True, drop_last=True,
                        persistent_workers=True)
    n, t0, first = 0, time.perf_counter(), None
    for p in range(20):
        for x, _ in loader:
            if first is None:
                first, t0 = time.perf_counter() - t0, time.perf_counter()  # worker start-up excluded
                continue
            n += x.shape[0]
            if time.perf_counter() - t0 > seconds:
                break
        if time.perf_counter() - t0 > seconds:
            break
    rate = n / (time.perf_counter() - t0)
    return {"batch": batch, "workers": workers, "samples_per_s": rate, "startup_s": first}


def full_loop(cache: Path, work: Path, batch: int, steps: int, window: int, workers: int, compile_: bool,
              timeout: float) -> dict:
    run = work / f"run-{batch}-{'compiled' if compile_ else 'eager'}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--arch", "densenet121",
           "--weights", "none", "--input-size", "224", "--input-transform", "resize", "--batch-size", str(batch),
           "--precision", "bf16", "--channels-last", "--epochs", "1", "--max-steps-per-epoch", str(steps),
           "--log-every", str(window), "--workers", str(workers), "--set", "eval_every=1000", "--no-progress",
           "--optimizer", "adam"] + (["--compile"] if compile_ else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"batch": batch, "compiled": compile_, "error": proc.stdout[-2000:]}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    skip = 2 if compile_ else 1  # the first window(s): cuDNN autotuning, compilation
    steady = train[skip:] or train[-1:]
    rate = sum(r["img_per_s"] for r in steady) / len(steady)
    return {"batch": batch, "compiled": compile_, "img_per_s": rate, "windows": [round(r["img_per_s"], 1) for r in train],
            "mfu": rate * GFLOP_PER_IMAGE / 1e3 / PEAK_TFLOPS, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-bench"))
    ap.add_argument("--work", default="/tmp/gpu-bench-work")
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--loop-batches", default="128,256")
    ap.add_argument("--compile-batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=16000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--budget", type=float, default=440.0, help="seconds; stages that would start later are skipped")
    args = ap.parse_args()
    t_start = time.perf_counter()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    left = lambda: args.budget - (time.perf_counter() - t_start)  # noqa: E731
    results = {"machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cpus": os.cpu_count(),
                           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
               "bare": [], "loader": [], "loop": []}

    def save():
        (out / "gpu.json").write_text(json.dumps(results, indent=2))

    print(results["machine"], flush=True)
    for b in map(int, args.batches.split(",")):
        r = bare_step("densenet121", b, steps=20, warmup=5, compile_=False)
        results["bare"].append(r)
        print(f"bare eager batch {b}: {r['img_per_s']:.0f} img/s, MFU {100 * r['mfu']:.1f}%, "
              f"peak {r['peak_mem_gib']:.1f} GiB", flush=True)
        save()
    cache = make_cache(work, args.images)
    print(f"cache ready at {time.perf_counter() - t_start:.0f} s", flush=True)
    r = loader_rate(cache, 128, args.workers, seconds=15)
    results["loader"].append(r)
    print(f"loader alone, batch 128, {args.workers} workers: {r['samples_per_s']:.0f} samples/s", flush=True)
    save()
    for b in map(int, args.loop_batches.split(",")):
        if left() < 60:
            break
        r = full_loop(cache, work, b, steps=50, window=10, workers=args.workers, compile_=False, timeout=left())
        results["loop"].append(r)
        print(f"full loop eager batch {b}: {r.get('img_per_s', float('nan')):.0f} img/s {r.get('windows')} "
              f"{r.get('error', '')}", flush=True)
        save()
    if left() > 150:
        r = bare_step("densenet121", args.compile_batch, steps=20, warmup=5, compile_=True)
        results["bare"].append(r)
        print(f"bare compiled batch {args.compile_batch}: {r['img_per_s']:.0f} img/s (compile + warm-up "
              f"{r['warmup_s']:.0f} s), peak {r['peak_mem_gib']:.1f} GiB", flush=True)
        save()
    if left() > 150:
        try:
            r = full_loop(cache, work, args.compile_batch, steps=60, window=10, workers=args.workers, compile_=True,
                          timeout=max(30.0, left() - 10))
        except subprocess.TimeoutExpired:
            r = {"batch": args.compile_batch, "compiled": True, "error": "timed out"}
        results["loop"].append(r)
        print(f"full loop compiled batch {args.compile_batch}: {r.get('img_per_s', float('nan')):.0f} img/s "
              f"{r.get('windows')} {r.get('error', '')}", flush=True)
        save()
    lines = [f"{results['machine']['gpu']}, torch {results['machine']['torch']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['date']}; DenseNet-121, bf16 autocast, channels-last, 224 px, fused Adam", "",
             "| what | batch | compiled | img/s | MFU | peak GiB | full / bare |", "|---|---|---|---|---|---|---|"]
    bare = {(r["batch"], r["compiled"]): r for r in results["bare"]}
    for r in results["bare"]:
        lines.append(f"| bare step | {r['batch']} | {r['compiled']} | {r['img_per_s']:.0f} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_mem_gib']:.1f} | |")
    for r in results["loop"]:
        if "img_per_s" in r:
            ref = bare.get((r["batch"], r["compiled"]))
            ratio = f"{r['img_per_s'] / ref['img_per_s']:.2f}" if ref else ""
            lines.append(f"| full loop | {r['batch']} | {r['compiled']} | {r['img_per_s']:.0f} | {100 * r['mfu']:.1f}% "
                         f"| | {ratio} |")
        else:
            lines.append(f"| full loop | {r['batch']} | {r['compiled']} | failed | | | |")
    for r in results["loader"]:
        lines.append(f"| loader alone ({r['workers']} workers) | {r['batch']} | | {r['samples_per_s']:.0f} | | | |")
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    save()
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
