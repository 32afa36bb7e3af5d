"""int8 vs fp32 ONNX export on this CPU: speed, size and what quantization costs in AUROC.

The model: ``--run RUN``, a trained run (the demo's: ``chexnet demo`` writes demo/runs/demo), or by default a
demo-like ResNet-18 (the demo recipe: from scratch, 112 px input, whole-image resize) trained briefly on a
synthetic cache (so its outputs carry signal, unlike random weights). It is exported twice with ``chexnet export
--dynamic-batch``: fp32, and ``--quantize int8`` (calibrated on ``--calibration-images`` train images). Both files
go through ``OnnxPredictor`` (what ``predict --onnx`` and ``serve`` run) on the same uint8 cache rows: img/s and
p50/p99 latency per call at batch 1 and 16, file size; then both predict the cache's test split and every image
of each ``--extra-cache`` (more synthetic images of the same generator, another seed): per-label AUROC change
(int8 - fp32), mean and max |change| against the goal (mean <= 0.005, max <= 0.01), max |dp| and its quantiles.
The int8 export's own check (its ``chexnet_quantization`` metadata: the val split) is recorded beside it.

    python benchmarks/bench_int8.py --json int8.json
    python benchmarks/bench_int8.py --run demo/runs/demo --cache demo/cache --extra-cache extra-cache --json int8.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import call_times, machine, make_cache



def latency(fn, reps: int, warmup: int = 3) -> dict:
    t = np.asarray(call_times(fn, reps, warmup)) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "reps": reps}


def compare(files: dict, cache: Path, extra: list, goal_mean: float, goal_max: float) -> dict:
    """fp32 against int8 on ``cache``'s test split and every image of each ``extra`` cache, pooled: each label's
    AUROC change (int8 - fp32), its mean and max |change| against the goals, |dp| (max and quantiles)."""
    from chexnet.data.cache import load_cache
    from chexnet.metrics import auroc
    from chexnet.predict import OnnxPredictor

    sets = []
    images, index, _ = load_cache(cache)
    sets.append((f"{Path(cache).name} test split", images, np.flatnonzero(index["split"].to_numpy() == "test"), index))
    for path in extra:
        images, index, _ = load_cache(path)
        sets.append((f"{Path(path).name} (all splits)", images, np.arange(len(index)), index))
    preds = {name: OnnxPredictor(path) for name, path in files.items()}
    labels = list(preds["fp32"].labels)
    p, y, described = {"fp32": [], "int8": []}, [], []
    for what, images, rows, index in sets:
        for name, pred in preds.items():
            p[name].append(np.concatenate([pred.probabilities(np.asarray(images[rows[i:i + 16]]))
                                           for i in range(0, len(rows), 16)]))
        y.append(index.iloc[rows][labels].to_numpy(float))
        described.append(f"{what}: {len(rows)}")
    p32, p8, y = np.concatenate(p["fp32"]), np.concatenate(p["int8"]), np.concatenate(y)
    a32, a8 = np.atleast_1d(auroc(y, p32)), np.atleast_1d(auroc(y, p8))
    change = {n: (float(b - a) if np.isfinite(a) and np.isfinite(b) else None) for n, a, b in zip(labels, a32, a8)}
    known = np.abs([d for d in change.values() if d is not None])
    dp = np.abs(p8 - p32)
    out = {"images": int(len(y)), "sets": described, "positives": dict(zip(labels, y.sum(0).astype(int).tolist())),
           "auroc_fp32": dict(zip(labels, a32.tolist())), "auroc_change": change,
           "mean_abs_auroc_change": float(known.mean()), "max_abs_auroc_change": float(known.max()),
           "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean()),
           "abs_dp_quantiles": {q: float(np.quantile(dp, float(q))) for q in ("0.5", "0.99", "0.999")},
           "goal": {"mean_abs_auroc_change": goal_mean, "max_abs_auroc_change": goal_max}}
    out["goal_met"] = bool(out["mean_abs_auroc_change"] <= goal_mean and out["max_abs_auroc_change"] <= goal_max)
    print(f"int8 vs fp32 on {out['images']} images ({'; '.join(described)}): mean |dAUROC| "
          f"{out['mean_abs_auroc_change']:.4f}, max {out['max_abs_auroc_change']:.4f} (goal {goal_mean} / {goal_max}: "
          f"{'met' if out['goal_met'] else 'NOT met'}); max |dp| {out['max_abs_dp']:.3f}, p99.9 "
          f"{out['abs_dp_quantiles']['0.999']:.4f}, mean {out['mean_abs_dp']:.5f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1200, help="synthetic images in the cache (70/10/20 split)")
    ap.add_argument("--size", type=int, default=128, help="cache row size")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=100, help="timed calls at batch 1 (batch 16: a third as many)")
    ap.add_argument("--work", default="/tmp/chexnet-bench-int8")
    ap.add_argument("--run", default=None, help="a trained run to export (default: train the small one)")
    ap.add_argument("--cache", default=None, help="with --run: its cache (default: the one run.json records)")
    ap.add_argument("--extra-cache", action="append", default=[], help="more images to compare AUROC on (all splits)")
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--goal-mean", type=float, default=0.005, help="goal: mean |AUROC change| at most this")
    ap.add_argument("--goal-max", type=float, default=0.01, help="goal: max |AUROC change| at most this")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import onnxruntime
    import torch

    from chexnet import onnx_metadata as M
    from chexnet.config import TrainConfig, apply_overrides, load_yaml
    from chexnet.data.cache import load_cache
    from chexnet.export import export_onnx
    from chexnet.predict import OnnxPredictor
    from chexnet.train import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.run:
        run = Path(args.run)
        cache = Path(args.cache) if args.cache else Path(json.loads((run / "run.json").read_text())["cache"])
        import yaml

        model = f"{run} ({yaml.safe_load((run / 'config.yaml').read_text()).get('arch')}, trained)"
    else:
        cache = make_cache(work, args.images, args.size)
        run = work / f"run-resnet18-{args.images}-{args.epochs}"
        model = (f"resnet18 (demo recipe, {args.epochs} epochs on {args.images} synthetic images, "
                 f"{args.size} px rows -> 112 px input)")
        if not (run / "checkpoints" / "best.pt").is_file():
            recipe = {**load_yaml("demo"), "epochs": args.epochs, "workers": 0, "precision": "fp32", "eval_every": 1}
            t0 = time.time()
            train(apply_overrides(TrainConfig(), recipe, "bench"), cache, run, progress=False)
            print(f"trained {run} in {time.time() - t0:.0f} s", flush=True)
    files = {"fp32": work / f"{run.name}.fp32.onnx", "int8": work / f"{run.name}.int8.onnx"}
    export_onnx(run, out=files["fp32"], dynamic_batch=True, cache=cache)
    export_onnx(run, out=files["int8"], dynamic_batch=True, quantize="int8",
                calibration_images=args.calibration_images, cache=cache)

    images, index, _ = load_cache(cache)
    rows = np.asarray(images[np.flatnonzero(index["split"].to_numpy() == "test")[:16]])
    result = {"machine": machine(onnxruntime=onnxruntime.__version__, torch=torch.__version__),
              "model": model, "command": " ".join(["python", *sys.argv])}
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
    result["auroc"] = compare(files, cache, args.extra_cache, args.goal_mean, args.goal_max)
    q = json.loads(OnnxPredictor(files["int8"]).metadata[M.QUANTIZATION])
    result["int8_check"] = q["parity"]
    result["int8_quantization"] = {k: v for k, v in q.items() if k != "parity"}
    print(json.dumps(q["parity"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
