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
4. the same two with ``torch.compile``, for each of ``--compile-modes`` (inductor's ``default``,
   ``reduce-overhead``: CUDA graphs, ``max-autotune``: autotuned kernels and CUDA graphs; ``chexnet train
   --compile --compile-mode M``), compile time reported;
5. with ``--profile``: torch.profiler over a few eager bare steps at ``--profile-batch``: the top kernels by
   device time (OUT/profile.txt, and in gpu.json), to say what stands between the loop and the memory-traffic
   bound.

``--stages`` picks stages (bare, loader, loop, compiled, profile) so that one lent machine's 15 minutes can be
split over two calls. ``--dry-run`` runs every stage on the CPU at a tiny size (a check of this script, not a
measurement).

    PYTHONPATH=src python3 benchmarks/bench_gpu.py --out /tmp/gpu-bench
    PYTHONPATH=src python3 benchmarks/bench_gpu.py --stages compiled,profile --compile-modes reduce-overhead,max-autotune
    PYTHONPATH=src python3 benchmarks/bench_gpu.py --dry-run --out /tmp/gpu-dry
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


DEVICE, SIZE = "cuda", 224  # --dry-run: "cpu", 64


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _bare_setup(arch: str, batch: int, mode: str | None):
    """A model, optimizer and one fixed batch on the device; ``step()`` runs forward + BCE + backward + Adam.
    ``mode``: None (eager) or a torch.compile mode."""
    from chexnet.models import create_model

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = create_model(arch, "none").to(DEVICE).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=DEVICE == "cuda")
    net = model if mode is None else torch.compile(model, mode=None if mode == "default" else mode)
    x = torch.randn(batch, 3, SIZE, SIZE, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, 14), device=DEVICE).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = loss_fn(net(x).float(), y)
        loss.backward()
        opt.step()

    return step


def bare_step(arch: str, batch: int, steps: int, warmup: int, mode: str | None = None) -> dict:
    step = _bare_setup(arch, batch, mode)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync()
    warm_s = time.perf_counter() - t0
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    rate = batch * steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    out = {"arch": arch, "batch": batch, "compiled": mode or False, "img_per_s": rate,
           "mfu": rate * GFLOP_PER_IMAGE / 1e3 / PEAK_TFLOPS, "peak_mem_gib": peak, "warmup_s": warm_s}
    del step
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return out


def profile_step(arch: str, batch: int, out: Path, steps: int = 5, top: int = 20) -> dict:
    """torch.profiler over ``steps`` eager bare steps after warm-up: the top ops/kernels by device (GPU) or CPU
    self time, as a table in OUT/profile.txt and the list in the result."""
    from torch.profiler import ProfilerActivity, profile

    step = _bare_setup(arch, batch, None)
    for _ in range(3):
        step()
    _sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync()
    key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    (out / "profile.txt").write_text(averages.table(sort_by=key, row_limit=top))
    attr = "self_device_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    rows = sorted(averages, key=lambda e: getattr(e, attr, 0) or 0, reverse=True)
    total = sum(getattr(e, attr, 0) or 0 for e in averages) or 1.0
    top_rows = [{"name": e.key, "calls": e.count, "self_ms_per_step": (getattr(e, attr, 0) or 0) / 1e3 / steps,
                 "share": (getattr(e, attr, 0) or 0) / total} for e in rows[:top]]
    del step
    return {"batch": batch, "steps": steps, "time": attr, "top": top_rows}


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


def full_loop(cache: Path, work: Path, batch: int, steps: int, window: int, workers: int, mode: str | None,
              timeout: float) -> dict:
    compile_ = mode or False
    run = work / f"run-{batch}-{mode or 'eager'}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--arch", "densenet121",
           "--weights", "none", "--input-size", str(SIZE), "--input-transform", "resize", "--batch-size", str(batch),
           "--precision", "bf16", "--channels-last", "--epochs", "1", "--max-steps-per-epoch", str(steps),
           "--log-every", str(window), "--workers", str(workers), "--set", "eval_every=1000", "--no-progress",
           "--optimizer", "adam"] + (["--compile", "--compile-mode", mode] if mode else [])
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


STAGES = ("bare", "loader", "loop", "compiled", "profile")


def main() -> None:
    global DEVICE, SIZE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-bench"))
    ap.add_argument("--work", default="/tmp/gpu-bench-work")
    ap.add_argument("--stages", default="bare,loader,loop,compiled", help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--batches", default="64,256,512", help="bare eager step batch sizes")
    ap.add_argument("--loop-batches", default="256,512", help="full loop (eager) batch sizes")
    ap.add_argument("--compile-batch", type=int, default=256, help="batch of the compiled bare step and loop")
    ap.add_argument("--compile-modes", default="default", help="torch.compile modes, comma-separated: default, "
                    "reduce-overhead, max-autotune")
    ap.add_argument("--profile", action="store_true", help="add the profile stage")
    ap.add_argument("--profile-batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=16000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--budget", type=float, default=440.0, help="seconds; stages that would start later are skipped")
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU at a tiny size: checks the script")
    args = ap.parse_args()
    stages = set(args.stages.split(",")) | ({"profile"} if args.profile else set())
    unknown = stages - set(STAGES)
    if unknown:
        ap.error(f"--stages: unknown {sorted(unknown)}; known: {', '.join(STAGES)}")
    modes = [m for m in args.compile_modes.split(",") if m]
    steps, loop_steps, images = 20, 50, args.images
    if args.dry_run:
        DEVICE, SIZE, steps, loop_steps, images = "cpu", 64, 2, 4, 64
        args.batches, args.loop_batches, args.compile_batch, args.profile_batch = "2", "2", 2, 2
        args.workers = min(args.workers, 1)
    elif not torch.cuda.is_available():
        ap.error("no CUDA device: this is the GPU benchmark (--dry-run checks it on the CPU)")
    t_start = time.perf_counter()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    left = lambda: args.budget - (time.perf_counter() - t_start)  # noqa: E731
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU dry run ({platform.processor() or 'cpu'})"
    results = {"machine": {"gpu": gpu, "torch": torch.__version__, "cpus": os.cpu_count(),
                           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
               "command": " ".join(sys.argv), "bare": [], "loader": [], "loop": [], "profile": None}

    def save():
        (out / "gpu.json").write_text(json.dumps(results, indent=2))

    print(results["machine"], flush=True)
    if "bare" in stages:
        for b in map(int, args.batches.split(",")):
            r = bare_step("densenet121", b, steps=steps, warmup=5 if not args.dry_run else 1)
            results["bare"].append(r)
            print(f"bare eager batch {b}: {r['img_per_s']:.0f} img/s, MFU {100 * r['mfu']:.1f}%, "
                  f"peak {r['peak_mem_gib']:.1f} GiB", flush=True)
            save()
    if "profile" in stages:
        results["profile"] = profile_step("densenet121", args.profile_batch, out, steps=5 if not args.dry_run else 1)
        print(f"profile, eager batch {args.profile_batch}, top by {results['profile']['time']}:", flush=True)
        for r in results["profile"]["top"][:10]:
            print(f"  {100 * r['share']:5.1f}%  {r['self_ms_per_step']:8.2f} ms/step  {r['calls']:6d} calls  "
                  f"{r['name'][:90]}", flush=True)
        save()
    cache = make_cache(work, images) if stages & {"loader", "loop", "compiled"} else None
    if cache is not None:
        print(f"cache ready at {time.perf_counter() - t_start:.0f} s", flush=True)
    if "loader" in stages:
        r = loader_rate(cache, min(128, images // 4), args.workers, seconds=15 if not args.dry_run else 1)
        results["loader"].append(r)
        print(f"loader alone, batch {r['batch']}, {args.workers} workers: {r['samples_per_s']:.0f} samples/s", flush=True)
        save()
    if "loop" in stages:
        for b in map(int, args.loop_batches.split(",")):
            if left() < 60:
                break
            r = full_loop(cache, work, b, steps=loop_steps, window=min(10, loop_steps // 2), workers=args.workers,
                          mode=None, timeout=left())
            results["loop"].append(r)
            print(f"full loop eager batch {b}: {r.get('img_per_s', float('nan')):.0f} img/s {r.get('windows')} "
                  f"{r.get('error', '')}", flush=True)
            save()
    for mode in modes if "compiled" in stages else []:
        if left() < 150:
            print(f"compiled {mode}: skipped, {left():.0f} s of the budget left", flush=True)
            continue
        r = bare_step("densenet121", args.compile_batch, steps=steps, warmup=5 if not args.dry_run else 1, mode=mode)
        results["bare"].append(r)
        print(f"bare compiled ({mode}) batch {args.compile_batch}: {r['img_per_s']:.0f} img/s (compile + warm-up "
              f"{r['warmup_s']:.0f} s), peak {r['peak_mem_gib']:.1f} GiB", flush=True)
        save()
        if left() < 150:
            continue
        try:
            r = full_loop(cache, work, args.compile_batch, steps=max(loop_steps, 60) if not args.dry_run else loop_steps,
                          window=min(10, loop_steps // 2), workers=args.workers, mode=mode,
                          timeout=max(30.0, left() - 10))
        except subprocess.TimeoutExpired:
            r = {"batch": args.compile_batch, "compiled": mode, "error": "timed out"}
        results["loop"].append(r)
        print(f"full loop compiled ({mode}) batch {args.compile_batch}: {r.get('img_per_s', float('nan')):.0f} img/s "
              f"{r.get('windows')} {r.get('error', '')}", flush=True)
        save()
    lines = [f"{results['machine']['gpu']}, torch {results['machine']['torch']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['date']}; DenseNet-121, bf16 autocast, channels-last, {SIZE} px, Adam; "
             f"command: {results['command']}", "",
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
    if results["profile"]:
        lines += ["", f"top by {results['profile']['time']} (eager, batch {results['profile']['batch']}):", "",
                  "| share | ms/step | calls | op / kernel |", "|---|---|---|---|"]
        lines += [f"| {100 * r['share']:.1f}% | {r['self_ms_per_step']:.2f} | {r['calls']} | `{r['name'][:80]}` |"
                  for r in results["profile"]["top"][:15]]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    save()
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
