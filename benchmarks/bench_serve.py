"""``chexnet serve`` under load on this machine, with and without dynamic batching.

A DenseNet-121 run (random weights, the CheXNet recipe's 256 -> 224 preprocessing; see bench_predict.py) is
served on 127.0.0.1, and so is its ONNX export (onnxruntime), each twice: ``--max-batch 16 --max-wait-ms 10``
(batching) and ``--max-batch 1`` (none). Each time: 20 warm-up requests, then --requests uploads from --concurrency clients, a third of them broken files
(text, truncated PNG); 1024 x 1024 8-bit PNGs (NIH's format) for the good ones. Reports throughput (answers/s),
p50/p99 latency of the good answers, the mean batch from /metrics and the 5xx count (must be 0). The load
generator runs on the same machine as the server and shares its cores.

    python benchmarks/bench_serve.py --json serve.json
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench_common import free_port, machine  # the script's folder is on sys.path when it runs
from bench_predict import make_run

from chexnet.environment import library_versions


def samples(rng):
    from PIL import Image

    from chexnet.serve.loadgen import Sample

    good = []
    y, x = np.mgrid[0:1024, 0:1024]
    for i in range(6):
        lungs = 120 + 60 * np.exp(-((x - 512) ** 2 / 9e4 + (y - 500 - 20 * i) ** 2 / 1.4e5))
        img = np.clip(lungs + rng.normal(0, 12, lungs.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        good.append(Sample(f"nih_like_{i}.png", buf.getvalue()))
    bad = [Sample("notes.png", b"not an image\n"), Sample("truncated.png", good[0].data[: len(good[0].data) // 2])]
    out = []
    for i in range(6):
        out += [good[i], good[(i + 1) % 6], bad[i % 2]]
    return out


def _ms(value) -> str:
    return "      - ms" if value is None else f"{value:7.0f} ms"  # None: no good answer at all


def serve_once(run: Path, extra: list[str], data, requests: int, concurrency: int, log: Path) -> dict:
    import httpx

    from chexnet.serve.loadgen import mean_batch_size, run_load, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chexnet", "serve", str(run), "--port", str(port), *extra],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(url, proc, timeout=180)
        except RuntimeError as exc:
            raise RuntimeError(f"chexnet serve {' '.join(extra)}: {exc}; its log: {log}") from None
        run_load(url, data, requests=20, concurrency=concurrency, timeout_s=300)
        warm = httpx.get(url + "/metrics").text
        report = run_load(url, data, requests=requests, concurrency=concurrency, timeout_s=900)
        metrics = httpx.get(url + "/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    out = report.summary()
    out["mean_batch"] = round(mean_batch_size(metrics, since=warm), 2)  # the measured requests only
    out["server_5xx"] = sum(a.status >= 500 for a in report.answers)
    out["server_exit"] = proc.returncode
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--work", default="/tmp/chexnet-bench-predict")
    ap.add_argument("--engines", default="torch,onnx", help="comma-separated: torch (the run), onnx (its export)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    run = make_run(Path(args.work), args.arch)
    models = {}
    for engine in args.engines.split(","):
        if engine == "torch":
            models["torch"] = run
        elif engine == "onnx":
            onnx_path = Path(args.work) / f"{args.arch}.onnx"  # bench_predict.py's export, made here when missing
            if not onnx_path.is_file():
                from chexnet.export import export_onnx

                export_onnx(run, out=onnx_path, dynamic_batch=True)
            models["onnxruntime"] = onnx_path
        else:
            ap.error(f"--engines: unknown engine {engine!r} (torch, onnx)")
    data = samples(np.random.default_rng(0))
    result = {"machine": machine(**library_versions("torch", "onnxruntime", "fastapi", "uvicorn")),
              "arch": args.arch, "requests": args.requests, "concurrency": args.concurrency, "bad_fraction": 1 / 3}
    for (engine, model), (mode, extra) in ((m, b) for m in models.items() for b in (
            ("batching", ["--max-batch", "16", "--max-wait-ms", "10"]),
            ("no_batching", ["--max-batch", "1", "--max-wait-ms", "0"]))):
        r = serve_once(model, extra, data, args.requests, args.concurrency,
                       Path(args.work) / f"serve-{engine}-{mode}.log")
        name = f"{engine} {mode}"
        result[name] = r
        print(f"{name:<24} {r['throughput_rps']:6.1f} answers/s, good p50 {_ms(r['p50_ms'])}, p99 {_ms(r['p99_ms'])}, "
              f"mean batch {r['mean_batch']:5.2f}, statuses {r['statuses']}, 5xx {r['server_5xx']}, "
              f"exit {r['server_exit']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
