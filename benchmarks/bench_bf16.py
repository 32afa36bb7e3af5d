"""bf16 vs fp32 training on this CPU: does ``--precision bf16`` (CPU autocast) train the same model?

(a) The tiny config (tests/helpers.py ``TINY``: MobileNetV3-small, 32 px, batch 4) trained ``--tiny-steps`` steps
(whole epochs) in fp32 and in bf16 from the same seed and data, one thread: both per-step loss trajectories and
their relative differences |l_bf16 - l_fp32| / l_fp32, against the stated TINY_TOLERANCE: per step over the first
FIRST_STEPS steps, and per epoch (mean train loss, val loss).

(b) The synthetic demo set (``chexnet demo``'s synth + prepare: 2,400 images, 128 px cache rows) and the demo
recipe (``chexnet train --config demo --nproc 2``, the same seed) trained once in fp32 and once in bf16, each
evaluated on the test split (``chexnet evaluate RUN --split test``, in the precision it trained in): test AUROC
per label and mean for both, and the differences (goal: |d mean AUROC| <= 0.01). ``--demo-epochs`` (the same
for both) and ``--demo-train-args`` (e.g. ``--input-size 32``, for both) shrink the recipe where bf16 is emulated
(no AVX512-BF16/AMX: torch then runs bf16 convolutions in its slow im2col path, 10-16x slower than fp32) and the
recipe's 6 epochs at 112 px would take hours.

    PYTHONPATH=src:benchmarks python benchmarks/bench_bf16.py --json bf16.json       # the recipe as it is
    PYTHONPATH=src:benchmarks python benchmarks/bench_bf16.py --demo-epochs 2 --demo-train-args "--input-size 32"

A finished run (its test auroc.csv exists) under ``--work`` is reused, so a second call only recomputes the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers' TINY config

PRECISIONS = ("fp32", "bf16")
# the stated tolerances of (a), bf16 against fp32 (relative differences): the per-step loss over the first
# FIRST_STEPS steps (after them the two trajectories' weights have drifted apart and a 4-image batch's loss is
# noisy: a per-step bound over a long run says nothing), the mean train loss of each epoch, each epoch's val loss
FIRST_STEPS = 5
TINY_TOLERANCE = {"first_steps_max_rel_diff": 0.05, "epoch_train_loss_max_rel_diff": 0.10,
                  "epoch_val_loss_max_rel_diff": 0.01}


def tiny(work: Path, steps: int) -> dict:
    import torch

    from chexnet.config import TrainConfig, apply_overrides
    from chexnet.data.cache import load_cache
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate
    from chexnet.runlog import read_metrics
    from chexnet.train import train
    from tests.helpers import TINY

    cache = work / "tiny-cache"
    if not (cache / "meta.json").is_file():  # the tests' tiny_cache
        generate(work / "tiny-data", images=96, size=64, seed=0, progress=False, workers=1)
        prepare(work / "tiny-data", cache, size=48, workers=1, progress=False, val_fraction=0.3)
    losses, seconds, epochs_of = {}, {}, {}
    torch.set_num_threads(1)
    for precision in PRECISIONS:
        run = work / f"tiny-{precision}-{steps}"
        # ``steps`` steps: the tiny cache's train split holds fewer per epoch, so as many whole epochs as that takes
        per_epoch = int((load_cache(cache)[1]["split"] == "train").sum()) // TINY["batch_size"]
        overrides = {**TINY, "precision": precision, "log_every": 1, "epochs": -(-steps // per_epoch),
                     "max_steps_per_epoch": 0}
        t0 = time.time()
        if not (run / "run.json").is_file():
            train(apply_overrides(TrainConfig(), overrides, "bench"), cache, run, progress=False)
            seconds[precision] = time.time() - t0
        else:
            seconds[precision] = None  # reused
        records = read_metrics(run)
        losses[precision] = [r["loss"] for r in records if r["kind"] == "train"]
        epochs_of[precision] = {key: [r[key] for r in records if r["kind"] == "epoch"]
                                for key in ("train_loss", "val_loss", "val_auroc_mean")}
        print(f"tiny {precision}: {len(losses[precision])} steps", flush=True)
    a, b = np.asarray(losses["fp32"]), np.asarray(losses["bf16"])
    rel = np.abs(b - a) / np.abs(a)
    first = min(FIRST_STEPS, len(a))
    epoch_rel = {key: [abs(y - x) / abs(x) for x, y in zip(epochs_of["fp32"][key], epochs_of["bf16"][key])]
                 for key in ("train_loss", "val_loss")}
    checks = {"first_steps_max_rel_diff": float(rel[:first].max()),
              "epoch_train_loss_max_rel_diff": float(max(epoch_rel["train_loss"])),
              "epoch_val_loss_max_rel_diff": float(max(epoch_rel["val_loss"]))}
    holds = {k: checks[k] <= TINY_TOLERANCE[k] for k in checks}
    out = {"config": {**overrides, "precision": "fp32 | bf16", "steps": len(a), "threads": 1,
                      "cache": "the tests' tiny cache: 96 synthetic images, 48 px rows"},
           "loss": {k: [float(v) for v in vs] for k, vs in losses.items()},
           "epochs": epochs_of, "rel_diff_per_step": [float(v) for v in rel],
           "rel_diff_per_epoch": epoch_rel, "max_rel_diff_all_steps": float(rel.max()),
           "mean_rel_diff_all_steps": float(rel.mean()), **checks,
           "tolerance": TINY_TOLERANCE, "holds": holds, "seconds": seconds}
    print(f"tiny, {len(a)} steps: per-step |l_bf16 - l_fp32| / l_fp32 over the first {first} steps max "
          f"{checks['first_steps_max_rel_diff']:.4f}, over all steps max {rel.max():.4f} (mean {rel.mean():.4f}); "
          f"per-epoch train loss max {checks['epoch_train_loss_max_rel_diff']:.4f}, val loss max "
          f"{checks['epoch_val_loss_max_rel_diff']:.5f}; tolerances {TINY_TOLERANCE}: "
          f"{'all hold' if all(holds.values()) else 'NOT all hold: ' + str(holds)}", flush=True)
    return out


def demo(work: Path, epochs: int | None, nproc: int, goal: float, extra_args: str = "") -> dict:
    import pandas as pd

    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate
    from chexnet.demo import DEMO_CACHE_SIZE, DEMO_IMAGES, DEMO_SYNTH_SIZE
    from chexnet.labels import PATHOLOGIES
    from chexnet.runlog import read_metrics

    data, cache = work / "data", work / "cache"
    if not (data / "Data_Entry_2017.csv").is_file():
        generate(data, images=DEMO_IMAGES, size=DEMO_SYNTH_SIZE, seed=0, progress=False)
    if not (cache / "meta.json").is_file():
        prepare(data, cache, size=DEMO_CACHE_SIZE, progress=False)
    extra = shlex.split(extra_args)
    tag = "".join(a.strip("-").replace("_", "") for a in extra)
    result = {"recipe": "chexnet train --config demo" + (f" --epochs {epochs}" if epochs else "") +
                        (f" {extra_args}" if extra else "") + f" --nproc {nproc} (seed 0)", "runs": {}}
    tables = {}
    for precision in PRECISIONS:
        run = work / "runs" / f"demo-{precision}-e{epochs or 'recipe'}{'-' + tag if tag else ''}"
        table = run / "eval" / "test" / "auroc.csv"
        cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--config",
               "demo", "--resume", "auto", "--nproc", str(nproc), "--precision", precision, "--no-progress"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        cmd += extra
        t0 = time.time()
        if not table.is_file():
            subprocess.run(cmd, check=True)
        trained = time.time() - t0
        if not table.is_file():
            subprocess.run([sys.executable, "-m", "chexnet", "evaluate", str(run), "--split", "test", "--bootstrap",
                            "200"], check=True, stdout=subprocess.DEVNULL)
        tables[precision] = pd.read_csv(table, index_col=0)
        epochs_log = [r for r in read_metrics(run) if r["kind"] == "epoch"]
        result["runs"][precision] = {
            "run": str(run), "seconds": trained if trained > 1 else None,
            "train_img_per_s": [r.get("img_per_s") for r in epochs_log],
            "val_loss": [r.get("val_loss") for r in epochs_log],
            "val_auroc_mean": [r.get("val_auroc_mean") for r in epochs_log],
            "test_auroc": {n: _num(tables[precision].loc[n, "auroc"]) for n in PATHOLOGIES},
            "test_auroc_mean": _num(tables[precision].loc["Mean", "auroc"])}
        print(f"demo {precision}: test mean AUROC {result['runs'][precision]['test_auroc_mean']:.4f}", flush=True)
    f, b = result["runs"]["fp32"], result["runs"]["bf16"]
    diff = {n: (None if f["test_auroc"][n] is None or b["test_auroc"][n] is None
                else b["test_auroc"][n] - f["test_auroc"][n]) for n in PATHOLOGIES}
    known = [abs(d) for d in diff.values() if d is not None]
    d_mean = b["test_auroc_mean"] - f["test_auroc_mean"]
    result.update({"test_images": len(pd.read_csv(Path(f["run"]) / "eval" / "test" / "predictions.csv")),
                   "auroc_change_bf16_minus_fp32": diff, "mean_auroc_change": d_mean,
                   "max_abs_label_change": max(known) if known else None,
                   "goal": {"abs_mean_auroc_change": goal}, "holds": bool(abs(d_mean) <= goal)})
    print(f"demo: test mean AUROC fp32 {f['test_auroc_mean']:.4f}, bf16 {b['test_auroc_mean']:.4f}, change "
          f"{d_mean:+.4f} (goal |d| <= {goal}: {'met' if result['holds'] else 'NOT met'}); largest per-label "
          f"|d| {result['max_abs_label_change']:.4f}", flush=True)
    return result


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/chexnet-bench-bf16")
    ap.add_argument("--tiny-steps", type=int, default=30, help="at least this many steps (whole epochs)")
    ap.add_argument("--demo-epochs", type=int, default=None, help="default: the demo recipe's (6)")
    ap.add_argument("--demo-nproc", type=int, default=2)
    ap.add_argument("--demo-train-args", default="", help="more chexnet train arguments for both precisions, e.g. "
                    "'--input-size 32' where emulated bf16 is too slow for the recipe's 112 px")
    ap.add_argument("--goal", type=float, default=0.01, help="goal: |test mean AUROC change| at most this")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(torch=torch.__version__),
              "command": " ".join(["python", *sys.argv])}
    if not args.skip_tiny:
        result["tiny"] = tiny(work, args.tiny_steps)
    if not args.skip_demo:
        result["demo"] = demo(work, args.demo_epochs, args.demo_nproc, args.goal, args.demo_train_args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
