"""Scaling measured on this machine: step time split into compute and exposed all-reduce wait, 1 vs 2 processes.

Two real gloo processes (``torch.multiprocessing``, MASTER_ADDR=127.0.0.1), each with one intra-op thread:

* ``all-reduce`` of the model's gradient size (DenseNet-121: 6.97 M parameters, 27.9 MB fp32) and of smaller
  messages, to fit the alpha-beta (latency-bandwidth) model of this link: ``t(n) = a + b n`` per all-reduce;
* the training step (forward + BCE + backward + Adam) three ways: one process alone (``compute``), two processes
  under DDP with ``no_sync`` (the same compute, no communication), and two processes under DDP (bucketed
  all-reduce overlapped with backward), the last two alternating step by step (medians). ``exposed wait = DDP step - no_sync step``; ``overlap = 1 - exposed /
  all-reduce time`` is DDP's overlap, measured rather than assumed.

    python benchmarks/bench_scaling.py --arch densenet121 --size 128 --batch 8 --steps 3 --json scaling.json

The results feed ``benchmarks/scaling_model.py`` (ring vs parameter server, 2 to 512 workers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_common import free_port, machine, median_time


def step_fn(model, opt, x, y):
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def _worker(rank: int, world: int, port: int, args, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from chexnet.models import create_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = create_model(args.arch, "none")
    n_params = sum(p.numel() for p in model.parameters())
    result = {"params": n_params, "grad_mb": n_params * 4 / 1e6}

    # all-reduce alone: the gradient's size, and a sweep for the alpha-beta fit
    sizes = sorted({1_000, 100_000, 1_000_000, 4_000_000, n_params})
    reduce_times = {}
    for n in sizes:
        t = torch.ones(n)
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(args.reduce_reps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        reduce_times[n * 4] = statistics.median(times)
    result["allreduce_s_by_bytes"] = reduce_times

    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, 14)).float()
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    step = step_fn(ddp, opt, x, y)

    def no_sync_step():
        with ddp.no_sync():
            step()

    # alternate the two (A B A B ...) so that drift in the machine's speed hits both alike; medians
    no_sync_step()
    step()
    ns, dd = [], []
    for _ in range(args.steps):
        for fn, times in ((no_sync_step, ns), (step, dd)):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    result["no_sync_step_s"], result["ddp_step_s"] = statistics.median(ns), statistics.median(dd)
    result["no_sync_steps_s"], result["ddp_steps_s"] = ns, dd
    if rank == 0:
        out.update(result)
    dist.destroy_process_group()


def single_process(args) -> float:
    torch.set_num_threads(1)
    from chexnet.models import create_model

    torch.manual_seed(0)
    model = create_model(args.arch, "none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, 14)).float()
    return median_time(step_fn(model, opt, x, y), args.steps)


def fit_alpha_beta(by_bytes: dict) -> tuple[float, float]:
    """Least squares t = a + b n over the measured sizes (seconds, seconds per byte)."""
    import numpy as np

    n = np.array([float(k) for k in by_bytes])
    t = np.array(list(by_bytes.values()))
    b, a = np.polyfit(n, t, 1)
    return float(max(a, 0.0)), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--size", type=int, default=128, help="input side (the gradient size does not depend on it)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--reduce-reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.time()
    one = single_process(args)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), args, out), nprocs=2, join=True)
        two = dict(out)
    grad_bytes = int(two["params"] * 4)
    allreduce = two["allreduce_s_by_bytes"][grad_bytes]
    a, b = fit_alpha_beta(two["allreduce_s_by_bytes"])
    exposed = two["ddp_step_s"] - two["no_sync_step_s"]
    result = {
        "machine": machine(torch=torch.__version__),
        "args": vars(args), "params": two["params"], "grad_mb": grad_bytes / 1e6,
        "one_process_step_s": one, "two_no_sync_step_s": two["no_sync_step_s"], "two_ddp_step_s": two["ddp_step_s"],
        "allreduce_grad_s": allreduce, "exposed_wait_s": exposed, "overlap": 1 - exposed / allreduce,
        "alpha_s": a, "beta_s_per_byte": b, "bandwidth_gb_s": 1e-9 / b if b > 0 else float("inf"),
        "allreduce_s_by_bytes": two["allreduce_s_by_bytes"],
        "speedup_2": 2 * one / two["ddp_step_s"], "efficiency_2": one / two["ddp_step_s"],
        "seconds": time.time() - t0,
    }
    print(f"{args.arch}, {args.size} px, batch {args.batch} per process, 1 thread per process, gloo on loopback")
    print(f"gradient {result['grad_mb']:.1f} MB; all-reduce of it between 2 processes: {allreduce * 1e3:.0f} ms "
          f"(fit: alpha {a * 1e6:.0f} us, {result['bandwidth_gb_s']:.2f} GB/s)")
    print(f"step: 1 process {one:.2f} s; 2 processes no_sync {two['no_sync_step_s']:.2f} s, DDP {two['ddp_step_s']:.2f} s; "
          f"exposed all-reduce wait {exposed * 1e3:.0f} ms = {100 * exposed / two['ddp_step_s']:.1f}% of the step; "
          f"DDP overlap {100 * result['overlap']:.0f}%")
    print(f"2-process efficiency {100 * result['efficiency_2']:.0f}% (speed-up {result['speedup_2']:.2f}x on 2 cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
