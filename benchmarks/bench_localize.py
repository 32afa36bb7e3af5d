"""Do the heatmaps point at the lesions? A small model trained on synthetic X-rays, then ``chexnet localize``.

The synthetic generator draws each finding where its box says. A ResNet-18 is trained from scratch for
--epochs epochs on --images synthetic images (--size px cache rows, --input-size px input, so Grad-CAM's last
feature map is input-size / 32 on a side: 4 x 4 at 112 px) on findings with compact lesions (default
Cardiomegaly and Effusion), then ``chexnet.localize.localize_run`` runs Wang et al.'s protocol on every box of
the whole set (``split="all"``). Prints the per-finding table (peak in box, IoBB >= 0.1 / 0.5, each with its
random baseline) and writes every number to --json.

The result is one training trajectory: its numbers move with the CPU, the torch version and the thread count,
so they are a measurement (benchmarks/RESULTS.md), not a test. The pipeline's correctness on inputs whose answer
is known is tests/integration/test_localize_quality.py.

    python benchmarks/bench_localize.py --json localize.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from bench_common import machine  # the script's folder is on sys.path when it runs

from chexnet.environment import library_versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600, help="synthetic images (default 600)")
    ap.add_argument("--size", type=int, default=128, help="image and cache row size in px (default 128)")
    ap.add_argument("--input-size", type=int, default=112, help="network input size in px (default 112)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--findings", default="Cardiomegaly,Effusion", help="comma-separated labels to train on")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/chexnet-bench-localize")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    from chexnet.config import TrainConfig, apply_overrides
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate
    from chexnet.localize import localize_run
    from chexnet.train import train

    torch.set_num_threads(args.threads)
    findings = tuple(args.findings.split(","))
    work = Path(args.work)
    data, cache, run = work / f"data-{args.images}-{args.size}", work / f"cache-{args.images}-{args.size}", work / "run"
    if not (cache / "meta.json").is_file():
        generate(data, images=args.images, size=args.size, seed=args.seed, progress=False, workers=1,
                 min_prevalence=0.2)
        prepare(data, cache, size=args.size, workers=1, progress=False)
    shutil.rmtree(run, ignore_errors=True)
    cfg = apply_overrides(TrainConfig(), dict(arch=args.arch, weights="none", input_size=args.input_size,
                                              batch_size=32, epochs=args.epochs, workers=0, lr=2e-3,
                                              lr_reference_batch=32, schedule="cosine", labels=findings,
                                              select="val_auroc", log_every=50, seed=args.seed), "bench")
    t0 = time.perf_counter()
    train(cfg, cache, run, progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = localize_run(run, split="all", examples=2, progress=False)
    localize_s = time.perf_counter() - t0
    cols = ["n", "peak_in_box", "random_peak_in_box", "iobb_0.1", "random_iobb_0.1", "iobb_0.5", "random_iobb_0.5"]
    print(f"\n{args.arch} from scratch, {args.epochs} epochs on {args.images} synthetic images of {args.size} px "
          f"(input {args.input_size} px), findings {', '.join(findings)}; train {train_s:.0f} s, "
          f"localize {localize_s:.0f} s, {args.threads} threads")
    print(table[cols].to_string(float_format=lambda v: f"{v:.2f}"))
    if args.json:
        result = {"machine": machine(torch_threads=args.threads, **library_versions("torch", "captum")),
                  "args": vars(args), "train_s": train_s, "localize_s": localize_s,
                  "table": {name: {c: float(row[c]) for c in table.columns} for name, row in table.iterrows()}}
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
