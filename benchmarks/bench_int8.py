"""int8 vs fp32 ONNX export on this CPU: speed, size and what quantization costs in AUROC.

A demo-like ResNet-18 (the demo recipe: from scratch, 112 px input, whole-image resize) is trained briefly on a
synthetic cache (so its outputs carry signal, unlike random weights), then exported twice with ``chexnet
export --dynamic-batch``: fp32, and ``--quantize int8`` (calibrated on 64 train images). Both files go through
``OnnxPredictor`` (what ``predict --onnx`` and ``serve`` run) on the same uint8 cache rows: img/s and p50/p99
latency per call at batch 1 and 16, file size; the int8 export's own check (its ``chexnet_quantization``
metadata) gives per-label AUROC change and max |dp| against fp32 on the synthetic val split.

    python benchmarks/bench_int8.py --json int8.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_common import call_times, machine, make_cache

FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def latency(fn, reps: int, warmup: int = 3) -> dict:
    t = np.asarray(call_times(fn, reps, warmup)) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1200, help="synthetic images in the cache (70/10/20 split)")
    ap.add_argument("--size", type=int, default=128, help="cache row size")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=100, help="timed calls at batch 1 (batch 16: a third as many)")
    ap.add_argument("--work", default="/tmp/chexnet-bench-int8")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import onnxruntime
    import torch

    from chexnet import onnx_metadata as M
    from chexnet.config import TrainConfig, apply_overrides, load_yaml
    from chexnet.data.cache import load_cache
    from chexnet.export import export_onnx
    from chexnet.precision import cpu_flags
    from chexnet.predict import OnnxPredictor
    from chexnet.train import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = make_cache(work, args.images, args.size)
    run = work / f"run-resnet18-{args.images}-{args.epochs}"
    if not (run / "checkpoints" / "best.pt").is_file():
        recipe = {**load_yaml("demo"), "epochs": args.epochs, "workers": 0, "precision": "fp32", "eval_every": 1}
        t0 = time.time()
        train(apply_overrides(TrainConfig(), recipe, "bench"), cache, run, progress=False)
        print(f"trained {run} in {time.time() - t0:.0f} s", flush=True)
    files = {"fp32": work / "resnet18.fp32.onnx", "int8": work / "resnet18.int8.onnx"}
    export_onnx(run, out=files["fp32"], dynamic_batch=True)
    export_onnx(run, out=files["int8"], dynamic_batch=True, quantize="int8", calibration_images=64)

    images, index, _ = load_cache(cache)
    rows = np.asarray(images[np.flatnonzero(index["split"].to_numpy() == "test")[:16]])
    flags = cpu_flags()
    result = {"machine": machine(onnxruntime=onnxruntime.__version__, torch=torch.__version__,
                                 flags={f: f in flags for f in FLAGS}),
              "model": f"resnet18 (demo recipe, {args.epochs} epochs on {args.images} synthetic images, "
                       f"{args.size} px rows -> 112 px input)"}
    for name, path in files.items():
        pred = OnnxPredictor(path)
        r = {"mb": path.stat().st_size / 1e6}
        for batch in (1, 16):
            lat = latency(lambda: pred.probabilities(rows[:batch]), args.reps if batch == 1 else max(10, args.reps // 3))
            lat["img_per_s"] = batch / (lat["p50_ms"] / 1e3)
            r[f"batch{batch}"] = lat
            print(f"{name} batch {batch:>2}: {lat['img_per_s']:7.1f} img/s, p50 {lat['p50_ms']:6.2f} ms, "
                  f"p99 {lat['p99_ms']:6.2f} ms", flush=True)
        print(f"{name}: {r['mb']:.2f} MB", flush=True)
        result[name] = r
    q = json.loads(OnnxPredictor(files["int8"]).metadata[M.QUANTIZATION])
    result["int8_check"] = q["parity"]
    result["int8_quantization"] = {k: v for k, v in q.items() if k != "parity"}
    print(json.dumps(q["parity"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
