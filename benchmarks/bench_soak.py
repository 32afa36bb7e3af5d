"""``chexnet serve`` under steady load for a long time: do memory and open file descriptors stay flat?

A small untrained run (MobileNetV3-Small, random weights, 64 px input: the server's own code paths at little CPU
cost) is served on 127.0.0.1 with its default limits. For ``--minutes`` (default 10), ``--concurrency`` clients
upload without pause, a third of the uploads broken (a text file, a truncated PNG, the wrong form field), and
``--slow`` more clients each dribble a request's headers a byte every half second, are cut off by
``--header-timeout`` and connect again. Every minute: answers/s (good and bad), p50/p99 latency of the good
answers, the 5xx count, and the server's RSS and open file descriptors (from /proc). Verdict: after the first
``--warmup-minutes``, RSS and descriptors each stay within 10% of their first post-warm-up value. Loopback only;
stops by itself (the server gets SIGTERM at the end, or at any failure).

    python benchmarks/bench_soak.py --minutes 10 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import free_port, machine  # the script's folder is on sys.path when it runs

from chexnet.environment import library_versions

TOLERANCE = 0.10


def make_tiny_run(work: Path, arch: str = "mobilenet_v3_small", size: int = 64) -> Path:
    """A run directory with an untrained ``arch`` at ``size`` px (made once, reused)."""
    import torch

    from chexnet.checkpoint import save_checkpoint
    from chexnet.config import TrainConfig, apply_overrides, save_config
    from chexnet.models import create_model
    from chexnet.preprocess import Preprocessing

    run = work / f"run-{arch}-{size}"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    cfg = apply_overrides(TrainConfig(), {"arch": arch, "weights": "none", "input_size": size}, "bench")
    torch.manual_seed(0)
    state = {"model": create_model(arch, "none").state_dict(), "config": cfg.to_dict(), "epoch": 1, "global_step": 1,
             "preprocessing": Preprocessing(size, size, "resize").to_dict()}
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"labels": list(cfg.labels), "cache": "none"}))
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    return run


def samples(side: int):
    """Two good uploads to every broken one (text, truncated PNG, wrong field), cycling."""
    from PIL import Image

    from chexnet.serve.loadgen import Sample

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    good = []
    for i in range(6):
        lungs = sum(np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.45 - 0.02 * i) / 0.25) ** 2)) for cx in (0.3, 0.7))
        img = np.clip(180 - 110 * lungs + rng.normal(0, 6, lungs.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        good.append(Sample(f"xray_{i}.png", buf.getvalue()))
    bad = [Sample("notes.png", b"not an image\n"), Sample("truncated.png", good[0].data[: len(good[0].data) // 2]),
           Sample("wrong_field.png", good[1].data, field="image")]
    out = []
    for i in range(6):
        out += [good[i], good[(i + 1) % 6], bad[i % 3]]
    return out, {s.name for s in good}


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS MiB, open file descriptors) of process ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def slow_client(port: int, stop: float, cuts: list) -> None:
    """Dribble headers a byte every 0.5 s until the server cuts the connection, then connect again."""
    request = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            for byte in request:
                if time.monotonic() >= stop:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.5)
                except asyncio.TimeoutError:
                    continue
                cuts.append(data[:12])  # b"HTTP/1.1 408" (or b"" if the connection was reset)
                break
        except OSError:
            cuts.append(b"reset")
        finally:
            writer.close()


async def soak(url: str, port: int, pid: int, data, good: set[str], args) -> list[dict]:
    import httpx

    minutes = []
    start = time.monotonic()
    stop = start + args.minutes * 60
    answers: list[tuple[float, int, float, bool]] = []  # (done at, status, seconds, good sample)
    errors: list[str] = []
    cuts: list[bytes] = []
    counter = iter(range(10**12))

    async def client(http):
        for i in counter:
            if time.monotonic() >= stop:
                return
            s = data[i % len(data)]
            t0 = time.monotonic()
            try:
                r = await http.post(url + "/v1/predict", files={s.field: (s.name, s.data)})
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            answers.append((time.monotonic(), r.status_code, time.monotonic() - t0, s.name in good))

    async def sampler():
        seen = 0
        for minute in range(1, args.minutes + 1):
            await asyncio.sleep(max(0.0, start + minute * 60 - time.monotonic()))
            rss, fds = proc_stats(pid)
            part, seen = answers[seen:], len(answers)
            ok = np.array([a[2] * 1000 for a in part if a[1] == 200])
            row = {"minute": minute, "answers": len(part), "answers_per_s": round(len(part) / 60, 1),
                   "good_ok": int(len(ok)), "bad_4xx": sum(400 <= a[1] < 500 for a in part),
                   "5xx": sum(a[1] >= 500 for a in part), "wrong": sum((a[1] == 200) != a[3] for a in part),
                   "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
                   "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
                   "rss_mib": round(rss, 1), "open_fds": fds, "slow_cut": len(cuts), "transport_errors": len(errors)}
            minutes.append(row)
            print(f"min {minute:3d}: {row['answers_per_s']:6.1f} answers/s, p50 {row['p50_ms']} ms, p99 "
                  f"{row['p99_ms']} ms, 5xx {row['5xx']}, wrong {row['wrong']}, RSS {rss:7.1f} MiB, fds {fds}, "
                  f"slow clients cut {len(cuts)}, transport errors {len(errors)}", flush=True)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(args.concurrency)]
        tasks += [asyncio.create_task(slow_client(port, stop, cuts)) for _ in range(args.slow)]
        await sampler()
        await asyncio.wait(tasks, timeout=90)  # the last requests in flight; every one has a 60 s timeout
    if errors:
        print(f"transport errors, first ones: {errors[:3]}", file=sys.stderr)
    return minutes


def verdict(minutes: list[dict], warmup: int) -> dict:
    after = minutes[warmup:]
    out = {"warmup_minutes": warmup, "tolerance": TOLERANCE}
    for key in ("rss_mib", "open_fds"):
        values = [m[key] for m in after]
        if not values:
            out[key] = None
            continue
        ref = values[0]
        worst = max(abs(v - ref) / ref for v in values)
        out[key] = {"first": ref, "min": min(values), "max": max(values), "last": values[-1],
                    "worst_deviation": round(worst, 4), "flat": worst <= TOLERANCE}
    out["flat"] = all(out[k] and out[k]["flat"] for k in ("rss_mib", "open_fds"))
    out["no_5xx"] = all(m["5xx"] == 0 for m in minutes)
    out["answers_right"] = all(m["wrong"] == 0 for m in minutes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--warmup-minutes", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8, help="clients uploading without pause (default 8)")
    ap.add_argument("--slow", type=int, default=4, help="slow clients dribbling headers (default 4; 0: none)")
    ap.add_argument("--image-size", type=int, default=256, help="side of the good PNG uploads (default 256)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    ap.add_argument("--work", default="/tmp/chexnet-bench-soak")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.minutes <= args.warmup_minutes:
        ap.error("--minutes must be more than --warmup-minutes")

    work = Path(args.work)
    run = make_tiny_run(work)
    data, good = samples(args.image_size)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = work / "soak-serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chexnet", "serve", str(run), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        from chexnet.serve.loadgen import wait_ready

        wait_ready(url, proc, timeout=180)
        minutes = asyncio.run(soak(url, port, proc.pid, data, good, args))
        import httpx

        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result = {"machine": machine(**library_versions("torch", "fastapi", "uvicorn")), "model": run.name,
              "minutes": args.minutes, "concurrency": args.concurrency, "slow_clients": args.slow,
              "bad_fraction": 1 / 3, "image_size": args.image_size, "per_minute": minutes,
              "verdict": verdict(minutes, args.warmup_minutes), "server_exit": proc.returncode,
              "connections_cut": {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                                  if line.startswith("chexnet_connections_cut_total{")}}
    v = result["verdict"]
    print(f"verdict after {args.warmup_minutes} warm-up minute(s): RSS {v['rss_mib']}, fds {v['open_fds']}; "
          f"flat {v['flat']}, no 5xx {v['no_5xx']}, answers right {v['answers_right']}; server exit "
          f"{proc.returncode}; cut by the guards {result['connections_cut']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not (v["flat"] and v["no_5xx"] and v["answers_right"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
