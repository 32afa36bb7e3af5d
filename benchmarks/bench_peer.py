"""chexnet vs the Keras + Horovod report's stack on this CPU, side by side in one run.

Alternates the two, Keras then chexnet, ``--rounds`` times (at least 3 each) for each of ``--precisions``, and
reports the median and the best img/s of each, their ratios, and last each chexnet precision against the Keras
peer at its best precision (``make bench-peer`` runs fp32 and bf16: the line "chexnet bf16 base full loop / Keras
best" is the performance issue's ratio):

* Keras: ``benchmarks/keras_peer.py`` in its own venv (``--keras-python``; ``make bench-peer`` creates
  ``.venv-keras`` with tensorflow-cpu): the report's exact model (DenseNet121 + GAP + Dense(14, sigmoid,
  bias ones), Adadelta(1.0), binary cross-entropy) on random data already in memory, TF's thread pools pinned;
* chexnet: the full training loop, ``chexnet train`` with the same model and optimizer (``--arch densenet121
  --head-bias-init ones --optimizer adadelta --lr 1``), data loading from a synthetic 256 px cache included
  (whole rows, resize to 224 and normalisation in the loop), img/s from metrics.jsonl's steady-state windows.

Variants of the chexnet side (``--variants``), each from chexnet's own layout rule (``--channels-last auto``:
channels-last where bf16 runs on AMX or AVX512-BF16, NCHW elsewhere): ``base``, ``nchw`` (``--no-channels-last``),
``channels_last`` (always), ``compile`` (``torch.compile``, its compile time excluded), ``threads1`` (one
intra-op thread), ``workers0`` (no loader process), ``per_core`` (one rank per usable core, ``--nproc C``, each
with batch B / C, so the global batch stays B: the layout of the report's own runs, 2 MPI ranks per node).
With ``per_core`` the Keras side runs that layout too (``keras_per_core``): C ``keras_peer.py`` processes at once,
each pinned to its own core with one thread and batch B / C, counted as C x the slowest one's img/s and without
Horovod's all-reduce, so an upper bound for Keras + Horovod at one rank per core. "Keras best" is the best of its
precisions and layouts. Every number goes to ``--json``.

    python benchmarks/bench_peer.py --keras-python .venv-keras/bin/python --rounds 3 --json peer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import machine, make_cache

# variant: (extra flags, extra environment, one rank per core); every variant starts from --channels-last auto
# (chexnet.precision: on with bf16 hardware). One rank per core adds --nproc C and batch B / C (chexnet_rate).
VARIANT_FLAGS = {
    "base": ([], {}, False),
    "nchw": (["--no-channels-last"], {}, False),
    "channels_last": (["--channels-last"], {}, False),
    "compile": (["--compile"], {}, False),
    "threads1": ([], {"OMP_NUM_THREADS": "1"}, False),
    "workers0": (["--workers", "0"], {}, False),
    "per_core": ([], {}, True),
}


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def per_core_batch(batch: int, cores: int) -> int:
    if batch % cores:
        raise SystemExit(f"bench_peer: --batch {batch} does not split over {cores} cores (per_core keeps the global batch)")
    return batch // cores


def keras_cmd(python: str, batch: int, size: int, steps: int, precision: str, *extra: str) -> list[str]:
    return [python, str(Path(__file__).with_name("keras_peer.py")), "--batch", str(batch), "--size", str(size),
            "--steps", str(steps), "--precision", precision, *extra]


def keras_run(python: str, batch: int, size: int, steps: int, precision: str) -> dict:
    """One keras_peer.py run: its JSON line (img_per_s, and the TensorFlow and Keras versions it ran on)."""
    out = subprocess.run(keras_cmd(python, batch, size, steps, precision), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def keras_per_core_run(python: str, batch: int, size: int, steps: int, precision: str) -> dict:
    """One keras_peer.py process per usable core, started together, each pinned to its core with one thread and
    batch B / C. A synchronous C-rank job runs at the pace of its slowest rank: C x the slowest img/s, with no
    all-reduce counted (an upper bound for Keras + Horovod at one rank per core)."""
    cores = usable_cores()
    each = per_core_batch(batch, len(cores))
    cmd = keras_cmd(python, each, size, steps, precision, "--threads", "1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              preexec_fn=lambda c=c: os.sched_setaffinity(0, {c})) for c in cores]
    outs = [p.communicate()[0] for p in procs]
    for p in procs:
        if p.returncode:
            raise subprocess.CalledProcessError(p.returncode, cmd)
    rates = [json.loads(o.strip().splitlines()[-1])["img_per_s"] for o in outs]
    return {"img_per_s": len(cores) * min(rates), "ranks": rates}


def chexnet_rate(cache: Path, work: Path, batch: int, size: int, steps: int, precision: str, variant: str) -> float:
    flags, env, per_core = VARIANT_FLAGS[variant]
    run = work / f"run-{variant}-{precision}-{time.time_ns()}"
    warm = 4 if "compile" in variant else 2
    if per_core:
        cores = len(usable_cores())
        flags = [*flags, "--nproc", str(cores)]
        batch = per_core_batch(batch, cores)
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--arch", "densenet121",
           "--weights", "none", "--head-bias-init", "ones", "--optimizer", "adadelta", "--lr", "1",
           "--input-size", str(size), "--input-transform", "resize", "--batch-size", str(batch), "--precision",
           precision, "--epochs", "1", "--max-steps-per-epoch", str(warm + steps), "--log-every", "2", "--workers", "1",
           "--set", "eval_every=1000", "--no-progress", "--channels-last", "auto", *flags]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    steady = train[warm // 2:]
    return sum(r["img_per_s"] for r in steady) / len(steady)


KERAS_LAYOUTS = ("keras", "keras_per_core")


def _keras_best(runs: list[dict], stat: str) -> dict:
    """The Keras configuration (precision and layout) with the highest ``stat`` ("medians" or "best")."""
    precision, layout, rate = max(((r["precision"], k, r[stat][k]) for r in runs for k in KERAS_LAYOUTS
                                   if k in r[stat]), key=lambda t: t[2])
    return {"precision": precision, "layout": layout, "img_per_s": rate}


def against_keras_best(runs: list[dict], variants: list[str]) -> dict:
    """Each chexnet precision and variant against the Keras peer at *its* best: the precision and layout (one
    process, or one per core) with the highest median; the best single round likewise. By median and by best
    round."""
    keras_med, keras_best = _keras_best(runs, "medians"), _keras_best(runs, "best")
    out = {"keras_median": keras_med, "keras_best": keras_best, "ratios": {}, "lines": []}

    def name(k):
        return k["precision"] + (", one rank per core" if k["layout"] == "keras_per_core" else "")

    for run in runs:
        for v in variants:
            key = f"{run['precision']}/{v}"
            by_median = run["medians"][v] / keras_med["img_per_s"]
            by_best = run["best"][v] / keras_best["img_per_s"]
            out["ratios"][key] = {"median": by_median, "best": by_best}
            out["lines"].append(
                f"chexnet {run['precision']} {v} full loop / Keras best ({name(keras_med)}): median "
                f"{run['medians'][v]:.2f} / {keras_med['img_per_s']:.2f} = {by_median:.2f}x; best round "
                f"{run['best'][v]:.2f} / {keras_best['img_per_s']:.2f} ({name(keras_best)}) = {by_best:.2f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras-python", default=".venv-keras/bin/python", help="a Python with tensorflow-cpu")
    ap.add_argument("--rounds", type=int, default=3, help="alternating Keras/chexnet rounds per precision")
    ap.add_argument("--batch", type=int, default=16, help="images per step (both sides)")
    ap.add_argument("--size", type=int, default=224, help="input pixels (both sides)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run, after the warm-up steps")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated, each run by both sides")
    ap.add_argument("--variants", default="base", help=f"chexnet variants, comma-separated: {', '.join(VARIANT_FLAGS)}")
    ap.add_argument("--work", default="/tmp/chexnet-bench-peer", help="the synthetic cache and the runs")
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args()
    work = Path(args.work)
    cache = make_cache(work, 600)
    result = {"machine": machine(), "args": vars(args), "runs": []}
    variants = args.variants.split(",")
    for precision in args.precisions.split(","):
        keras_layouts = ["keras"] + (["keras_per_core"] if any(VARIANT_FLAGS[v][2] for v in variants) else [])
        rates = {**{k: [] for k in keras_layouts}, **{v: [] for v in variants}}
        for r in range(args.rounds):
            peer = keras_run(args.keras_python, args.batch, args.size, args.steps, precision)
            result.setdefault("peer", {k: peer[k] for k in ("tensorflow", "keras", "threads")})
            k = peer["img_per_s"]
            rates["keras"].append(k)
            print(f"round {r + 1} {precision}: keras {k:.2f} img/s", flush=True)
            if "keras_per_core" in rates:
                pc = keras_per_core_run(args.keras_python, args.batch, args.size, args.steps, precision)
                rates["keras_per_core"].append(pc["img_per_s"])
                print(f"round {r + 1} {precision}: keras per core {pc['img_per_s']:.2f} img/s (ranks "
                      f"{', '.join(f'{x:.2f}' for x in pc['ranks'])}; no all-reduce counted)", flush=True)
            for v in variants:
                c = chexnet_rate(cache, work, args.batch, args.size, args.steps, precision, v)
                rates[v].append(c)
                print(f"round {r + 1} {precision}: chexnet {v} {c:.2f} img/s", flush=True)
        med = {name: statistics.median(v) for name, v in rates.items()}
        best = {name: max(v) for name, v in rates.items()}
        result["runs"].append({"precision": precision, "rates": rates, "medians": med, "best": best,
                               "ratios": {v: med[v] / med["keras"] for v in variants}})
        for v in variants:
            print(f"{precision}: chexnet {v} median {med[v]:.2f} / keras {med['keras']:.2f} img/s = "
                  f"{med[v] / med['keras']:.2f}x; best {best[v]:.2f} / {best['keras']:.2f} = "
                  f"{best[v] / best['keras']:.2f}x", flush=True)
    result["against_keras_best"] = against_keras_best(result["runs"], variants)
    for line in result["against_keras_best"]["lines"]:
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
