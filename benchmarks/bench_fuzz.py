"""Hostile files at scale: thousands of seeded mutated files through chexnet's image reader.

The fuzzer of ``tests/test_fuzz_images.py`` (the test suite runs 320 cases of it): seeds of every kind chexnet reads
(PNG 8/16-bit, JPEG, TIFF, DICOM generated there and test files shipped inside the pydicom package), mutated by bit
flips, truncations, spliced random bytes, zeroed blocks, wrong signatures, headers claiming enormous sizes, DICOM
Rows / Columns / frame counts / syntaxes that lie. Each case runs one of the readers predict, prepare and the server
use, in worker processes that a crash or a hang cannot take down (each is attributed to its case, and the file kept
in --work to reproduce it). Prints the count of each outcome -- decoded, ImageReadError by kind, and failures (any
other exception, a crash, a hang) -- with median and slowest times, the slowest cases, the workers' peak RSS.

    python benchmarks/bench_fuzz.py --cases 5000 --workers 2 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_fuzz_images import run_fuzz, summarize  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1, help="fuzz run seed (case i of seed s is the same file every run)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--work", default=None, help="scratch folder; crashing or hanging files are kept there")
    p.add_argument("--json", default=None, help="write the summary (and every failure) here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    if args.work:
        records = run_fuzz(args.cases, args.seed, Path(args.work), args.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            records = run_fuzz(args.cases, args.seed, Path(tmp), args.workers)
    wall = time.perf_counter() - t0
    summary = summarize(records)

    times = defaultdict(list)
    for r in records:
        if r.get("seconds") is not None:
            times[r["outcome"]].append(r["seconds"])
    print(f"{summary['cases']} cases, seed {args.seed}, {args.workers} worker(s), {wall:.0f} s")
    print(f"{'outcome':<28}{'count':>7}{'share':>8}{'median ms':>11}{'max ms':>9}")
    for outcome, count in summary["outcomes"].items():
        ts = times.get(outcome, [])
        med = f"{statistics.median(ts) * 1e3:.1f}" if ts else "-"
        top = f"{max(ts) * 1e3:.0f}" if ts else "-"
        print(f"{outcome:<28}{count:>7}{count / summary['cases']:>8.1%}{med:>11}{top:>9}")
    print(f"failures (other exception, crash, hang): {len(summary['failures'])}")
    for r in summary["failures"][:20]:
        print(f"  case {r['case']} {r.get('seed_file')} {r.get('mutation')} [{r.get('api')}]: {r['outcome']} "
              f"{r.get('detail', '')[:200]}")
    slowest = sorted((r for r in records if r.get("seconds") is not None), key=lambda r: -r["seconds"])[:5]
    print("slowest files:")
    for r in slowest:
        print(f"  {r['seconds'] * 1e3:7.0f} ms  case {r['case']} {r['seed_file']} {r['mutation']} [{r['api']}] "
              f"-> {r['outcome']}")
    print(f"peak RSS of a worker: {summary['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "seed": args.seed, "workers": args.workers,
                                               "wall_seconds": wall, **summary}, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
