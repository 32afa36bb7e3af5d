"""Crash consistency of a training run: SIGKILL at random moments while it writes checkpoints, many times.

A tiny model trains on a small synthetic cache with ``--checkpoint-every 1`` (a checkpoint write every optimizer
step, so most moments of the run are inside or next to a write). Each round starts ``chexnet train ... --resume
auto`` in a subprocess, waits until it has written at least one checkpoint in this round, sleeps a random time
(seeded) and kills it with SIGKILL. After each kill: ``last.pt``, ``last.prev.pt`` and ``best.pt`` (those that
exist) must load and match the digests run.json records. At the end one more ``--resume auto`` must finish the
run. Prints and writes (--json) the kills, the files checked, the failures (0 expected) and the step reached at
each kill.

    python benchmarks/bench_crash.py --kills 40 --json crash.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import machine  # the script's folder is on sys.path when it runs

from chexnet.checkpoint import PREVIOUS, CheckpointError, check_recorded_digest, load_checkpoint

TRAIN = ["--arch", "mobilenet_v3_small", "--weights", "none", "--input-size", "32", "--batch-size", "4",
         "--workers", "0", "--lr", "1e-3", "--lr-reference-batch", "4", "--checkpoint-every", "1", "--no-progress"]


def _check(run: Path) -> tuple[int, list[str]]:
    checked, failures = 0, []
    for name in ("last.pt", PREVIOUS, "best.pt"):
        path = run / "checkpoints" / name
        if not path.exists():
            continue
        checked += 1
        try:
            load_checkpoint(path)
            check_recorded_digest(run, path)
        except CheckpointError as exc:
            failures.append(str(exc))
    return checked, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs (default 20)")
    ap.add_argument("--epochs", type=int, default=40, help="epochs of the run (default 40: the kills come first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    generate(work / "data", images=96, size=64, seed=0, progress=False, workers=1)
    prepare(work / "data", work / "cache", size=48, workers=1, progress=False, val_fraction=0.3)
    run = work / "run"
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(work / "cache"), "--out", str(run),
           "--epochs", str(args.epochs), "--resume", "auto", *TRAIN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills, checked, failures, steps = 0, 0, [], []
    t0 = time.time()
    while kills < args.kills:
        before = (run / "run.json").stat().st_mtime_ns if (run / "run.json").exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        while proc.poll() is None and not ((run / "run.json").exists()
                                           and (run / "run.json").stat().st_mtime_ns > before
                                           and (run / "checkpoints" / "last.pt").exists()):
            time.sleep(0.02)
        if proc.poll() is not None:
            raise SystemExit(f"training ended before kill {kills + 1}: {proc.stderr.read()[-2000:]}")
        time.sleep(float(rng.uniform(0.0, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        n, bad = _check(run)
        checked, failures = checked + n, failures + bad
        info = json.loads((run / "run.json").read_text()).get("checkpoints", {})
        steps.append((info.get("last.pt") or {}).get("global_step"))
        print(f"kill {kills}: step {steps[-1]}, {n} checkpoint(s) checked, {len(bad)} failure(s)", flush=True)
    final = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "kills": kills, "checkpoints_checked": checked, "failures": failures, "steps_at_kill": steps,
              "final_resume_rc": final.returncode, "seconds": round(time.time() - t0, 1)}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if failures or final.returncode:
        raise SystemExit(f"{len(failures)} failure(s); final resume exited {final.returncode}: "
                         f"{final.stderr[-2000:]}")


if __name__ == "__main__":
    main()
