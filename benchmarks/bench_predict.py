"""Inference on this CPU: ``chexnet predict``'s two engines, torch and onnxruntime, on the same model.

A DenseNet-121 run (random weights: speed does not depend on them) with the CheXNet recipe's preprocessing
(256 px cache rows resized to 224 inside the network) is written to --work, exported to ONNX, and both engines
predict the same uint8 rows: img/s at a batch of 16 and the latency of one image (medians). Decoding is timed
apart: a 1024 x 1024 8-bit PNG (NIH's format) to its 256 px row (``read_cache_row``, what predict runs per file).

    python benchmarks/bench_predict.py --json predict.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_common import machine, median_time


def make_run(work: Path, arch: str) -> Path:
    from chexnet.checkpoint import save_checkpoint
    from chexnet.config import TrainConfig, apply_overrides, save_config
    from chexnet.models import create_model
    from chexnet.preprocess import Preprocessing

    run = work / f"run-{arch}"
    if (run / "checkpoints" / "best.pt").is_file():
        return run
    cfg = apply_overrides(TrainConfig(), {"arch": arch, "weights": "none"}, "bench")
    torch.manual_seed(0)
    state = {"model": create_model(arch, "none").state_dict(), "config": cfg.to_dict(), "epoch": 1, "global_step": 1,
             "preprocessing": Preprocessing(256, 224, "resize").to_dict()}
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"labels": list(cfg.labels), "cache": "none"}))
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--work", default="/tmp/chexnet-bench-predict")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from PIL import Image

    from chexnet.export import export_onnx
    from chexnet.predict import OnnxPredictor, TorchPredictor
    from chexnet.preprocess import read_cache_row

    work = Path(args.work)
    run = make_run(work, args.arch)
    onnx_path = work / f"{args.arch}.onnx"
    if not onnx_path.is_file():
        export_onnx(run, out=onnx_path, dynamic_batch=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (args.batch, 256, 256), dtype=np.uint8)
    engines = {"torch": TorchPredictor(run), "onnxruntime": OnnxPredictor(onnx_path)}
    result = {"machine": machine(torch_threads=torch.get_num_threads(), torch=torch.__version__), "arch": args.arch, "batch": args.batch}
    for name, engine in engines.items():
        batch_s = median_time(lambda: engine.probabilities(rows), args.reps)
        one_s = median_time(lambda: engine.probabilities(rows[:1]), args.reps * 2)
        result[name] = {"img_per_s": args.batch / batch_s, "latency_ms_one_image": one_s * 1e3}
        print(f"{name:<12} batch {args.batch}: {args.batch / batch_s:6.1f} img/s; one image: {one_s * 1e3:6.0f} ms",
              flush=True)
    png = work / "nih-like.png"
    Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(png)
    decode_s = median_time(lambda: read_cache_row(png, 256), args.reps * 4)
    result["decode_ms_1024_png"] = decode_s * 1e3
    print(f"decode + area resize of a 1024 x 1024 PNG to its 256 px row: {decode_s * 1e3:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
