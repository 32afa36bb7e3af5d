"""All-reduce (DDP) against parameter servers (chexnet.ps, synchronous), measured on this machine.

For each layout, N real gloo processes (forked, MASTER_ADDR=127.0.0.1, one intra-op thread each) train the same
model on a fixed synthetic batch per worker:

* ``allreduce W``: W processes, all workers, DDP's bucketed ring all-reduce;
* ``ps W+K``: W workers and K servers (N = W + K processes), chexnet.ps's push / pull protocol.

Per layout: steps/s (median step time of the timed steps), and per process per step the bytes sent and received,
*counted*: by the PS protocol at each send and receive, and for every strategy by the kernel
(``/proc/self/io`` wchar: the bytes this process passed to write system calls, gloo's socket writes included;
the timed steps do no file I/O). The kernel's rchar does not see gloo's reads (recv system calls), so received
bytes are the protocol's count under PS; under all-reduce every rank of the ring receives what its neighbour
sends (loopback: the job's received bytes equal its sent bytes). Time communicating: for PS the worker's wait in the protocol; for all-reduce the
exposed part, the step time minus the step time without communication (DDP ``no_sync``, alternated step by step).

    python benchmarks/bench_strategies.py --arch densenet121 --size 64 --batch 4 --steps 6 --json strategies.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import free_port, machine  # noqa: E402


def _io() -> tuple[int, int]:
    """(wchar, rchar) of this process: bytes passed to write / read system calls (sockets included)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["rchar"])


def _batch(args, classes=14):
    g = torch.Generator().manual_seed(0)
    return torch.randn(args["batch"], 3, args["size"], args["size"], generator=g), \
        (torch.rand(args["batch"], classes, generator=g) > 0.5).float()


def _rank(rank, world, port, args, strategy, servers, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from chexnet import dist
    from chexnet.config import TrainConfig
    from chexnet.models import create_model
    from chexnet.optim import build_optimizer

    cfg = TrainConfig(arch=args["arch"], weights="none", optimizer="adam", lr=1e-4, strategy=strategy,
                      ps_servers=servers or 1, dist_timeout=600)
    info, device = dist.init(cfg.dist_timeout)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = _batch(args)

    def measure(worker_info):
        torch.manual_seed(0)
        model = create_model(cfg.arch, "none", 14)
        opt = build_optimizer(model.parameters(), cfg, cfg.lr)
        if strategy == "ps":
            from chexnet import ps

            opt = ps.attach(model, opt, cfg, worker_info)
            net = model

            def step(sync):
                opt.zero_grad()
                loss_fn(net(x), y).backward()
                if sync:
                    opt.remote_step()
        else:
            net = dist.wrap_ddp(model, device)

            def step(sync):
                opt.zero_grad()
                if sync:
                    loss_fn(net(x), y).backward()
                    opt.step()
                else:
                    with net.no_sync():
                        loss_fn(net(x), y).backward()
        rows = []
        for i in range(args["warmup"] + args["steps"]):
            for sync in (True, False):
                dist.barrier()
                io0, c0, t0 = _io(), (ps.TRAFFIC.comm_seconds if strategy == "ps" else 0.0), time.perf_counter()
                step(sync)
                t = time.perf_counter() - t0
                io1 = _io()
                if i >= args["warmup"]:
                    rows.append({"sync": sync, "t": t, "sent": io1[0] - io0[0], "recv": io1[1] - io0[1],
                                 "wait": (ps.TRAFFIC.comm_seconds if strategy == "ps" else 0.0) - c0})
        return rows

    if strategy == "ps":
        from chexnet import ps

        summary = ps.run(cfg, info, device, lambda wi: {"rows": measure(wi)})
    else:
        summary = {"rows": measure(info)}
    dist.teardown()
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary, default=str))


def run_layout(args, strategy, workers, servers, tmp):
    world = workers + servers
    out = Path(tmp) / f"{strategy}-{workers}-{servers}"
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(world, free_port(), args, strategy, servers, str(out)), nprocs=world,
                       join=True, start_method="fork")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    step = [statistics.median(r["t"] for r in ranks[w]["rows"] if r["sync"]) for w in range(workers)]
    local = [statistics.median(r["t"] for r in ranks[w]["rows"] if not r["sync"]) for w in range(workers)]
    row = {"strategy": strategy, "workers": workers, "servers": servers, "processes": world,
           "step_s": max(step), "steps_per_s": 1 / max(step), "compute_step_s": max(local),
           "exposed_comm_s": max(step) - max(local)}
    per_proc = []
    for r, rank in enumerate(ranks):
        role = "server" if r >= workers else "worker"
        entry = {"rank": r, "role": role}
        if role == "worker":
            sync = [x for x in rank["rows"] if x["sync"]]
            entry["os_sent_per_step"] = statistics.median(x["sent"] for x in sync)
            entry["os_recv_per_step"] = statistics.median(x["recv"] for x in sync)
            if strategy == "ps":
                entry["wait_s_per_step"] = statistics.median(x["wait"] for x in sync)
        if strategy == "ps":
            t = rank["traffic"]
            entry["ps_sent_per_step"] = t["bytes_sent_per_step"]
            entry["ps_recv_per_step"] = t["bytes_received_per_step"]
        per_proc.append(entry)
    row["per_process"] = per_proc
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-processes", type=int, default=4)
    p.add_argument("--json")
    a = p.parse_args(argv)
    args = {"arch": a.arch, "size": a.size, "batch": a.batch, "steps": a.steps, "warmup": a.warmup}
    os.environ["OMP_NUM_THREADS"] = "1"
    import tempfile

    layouts = [("allreduce", w, 0) for w in (2, 3, 4) if w <= a.max_processes]
    layouts += [("ps", n - k, k) for n in (2, 3, 4) for k in (1, 2) if n - k >= 1 and n <= a.max_processes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, w, k in layouts:
            row = run_layout(args, strategy, w, k, tmp)
            rows.append(row)
            worker = row["per_process"][0]
            sent = worker.get("ps_sent_per_step", worker["os_sent_per_step"]) / 1e6
            print(f"{strategy:9s} {w} workers + {k} servers: {row['steps_per_s']:.3f} steps/s, step "
                  f"{row['step_s'] * 1e3:.0f} ms (compute {row['compute_step_s'] * 1e3:.0f} ms, exposed comm "
                  f"{row['exposed_comm_s'] * 1e3:.0f} ms); worker 0 sends {sent:.1f} MB/step (kernel: "
                  f"{worker['os_sent_per_step'] / 1e6:.1f} MB written to sockets)",
                  flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/bench_strategies.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "args": args, "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
