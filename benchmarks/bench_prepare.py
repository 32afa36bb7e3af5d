"""Benchmark ``chexnet prepare``: PNG decode, decode + resize, and end-to-end images/s (issue 2).

Generates N 1024 x 1024 8-bit grayscale PNGs in NIH's layout with X-ray-like content (smooth
anatomy, rib bands, mid-frequency texture and pixel noise: about 0.5-1 MB per file, so zlib has
real work to do; NIH's PNGs average ~0.4 MB), then measures on a warm page cache, taking the
best of 3 passes / 2 runs to damp other load on a shared machine:

  (a) decode alone         read_xray(path)                    ms / image, one core
  (b) decode + resize      read_xray_resized(path, 256)       ms / image, one core (what prepare runs;
                           equal to resize_area(read_xray(path), 256), also timed)
  (c) prepare end to end   chexnet.data.prepare.prepare       images / s with 1 and with 2 workers

Target (issue 2): >= 45 images/s per core end to end, and (b) well under 2 x (a).

    python benchmarks/bench_prepare.py --images 200 --workers 1 2 --results benchmarks/RESULTS.md

The data set is kept in --data (default /tmp/chexnet-bench-prepare) and reused by later runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from chexnet.data.prepare import prepare
from chexnet.data.imageio import read_xray, read_xray_resized, resize_area


def xray_png(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """A chest-X-ray-like uint8 image: body, dark lungs with rib bands, heart, texture and noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = 170 - 80 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = sum(np.exp(-((((x - cx) / 0.15) ** 2 + ((y - 0.47) / 0.28) ** 2) ** 2)) for cx in (0.3, 0.7))
    ribs = 14 * np.sin(2 * np.pi * (y * rng.uniform(8, 10) + 0.6 * np.abs(x - 0.5))) * lungs
    heart = 60 * np.exp(-(((x - 0.55) / 0.12) ** 2 + ((y - 0.62) / 0.12) ** 2))
    coarse = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    noise = rng.normal(0, rng.uniform(4, 12), (size, size)).astype(np.float32)
    img = body - 100 * lungs + ribs + heart + 12 * texture + noise + rng.uniform(-15, 15)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Write (or reuse) n PNGs in NIH's layout with a Data_Entry_2017.csv; return the image paths."""
    folder = root / "images_001" / "images"
    names = [f"{i // 3 + 1:08d}_{i % 3:03d}.png" for i in range(n)]
    marker = root / f".complete-{n}-{seed}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
        for i, name in enumerate(names):
            Image.fromarray(xray_png(rng)).save(folder / name)
            rows.append(f"{name},No Finding,{i % 3},{i // 3 + 1},50,M,PA")
        (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
        marker.touch()
    return [folder / name for name in names]


def per_image_ms(fn, paths: list[Path]) -> float:
    """Best of 3 passes of the mean milliseconds per image of fn(path) (least disturbed by other load)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        times.append((time.perf_counter() - t0) * 1000 / len(paths))
    return float(min(times))


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def end_to_end(data: Path, out_root: Path, workers: int, size: int, repeats: int = 2) -> tuple[float, float]:
    """Fresh prepare (metadata, splits, decode, resize, write, finalize), best of ``repeats``.

    Returns (images per wall second, images per CPU second of all processes). The second is
    the per-core rate, and does not depend on other jobs sharing the machine.
    """
    best = (0.0, 0.0)
    for _ in range(repeats):
        out = out_root / f"cache-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        meta = prepare(data, out, size=size, workers=workers, progress=False)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        best = max(best, (meta["count"] / wall, meta["count"] / cpu))
        shutil.rmtree(out, ignore_errors=True)
    return best


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", load average %.2f %.2f %.2f at start" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{model}, {cores} usable cores, Python {platform.python_version()}{load}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data", type=Path, default=Path("/tmp/chexnet-bench-prepare"))
    ap.add_argument("--results", type=Path, help="append a markdown section to this file")
    args = ap.parse_args(argv)

    host = machine()  # before we load the machine ourselves
    paths = make_dataset(args.data, args.images)
    mb = np.mean([p.stat().st_size for p in paths]) / 1e6
    for p in paths:  # warm the page cache: we measure CPU, not the disk
        p.read_bytes()

    def pil_decode(p):
        with Image.open(p) as im:
            im.load()

    raw_ms = per_image_ms(pil_decode, paths)
    decode_ms = per_image_ms(read_xray, paths)
    both_ms = per_image_ms(lambda p: read_xray_resized(p, args.size), paths)
    unfused_ms = per_image_ms(lambda p: resize_area(read_xray(p), args.size), paths)
    rates = {w: end_to_end(args.data, args.data / "out", w, args.size) for w in args.workers}

    lines = [
        f"- images: {len(paths)} PNG, 1024 x 1024 8-bit gray, mean {mb:.2f} MB; cache size {args.size}",
        f"- (a) decode alone, best of 3 passes: PIL open+load {raw_ms:.1f} ms/img; read_xray {decode_ms:.1f} ms/img",
        f"- (b) decode + resize, read_xray_resized (what prepare runs): {both_ms:.1f} ms/img "
        f"= {both_ms / raw_ms:.2f} x PIL decode, {1000 / both_ms:.0f} img/s per core; "
        f"unfused resize_area(read_xray): {unfused_ms:.1f} ms/img",
    ]
    for w, (rate, per_cpu) in rates.items():
        lines.append(f"- (c) prepare end to end, best of 2 runs, {w} worker(s): {rate:.1f} img/s wall "
                     f"({rate / w:.1f} per worker); {per_cpu:.1f} img per CPU-second (all processes)")
    print("\n".join(lines))
    if args.results:
        command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
        section = [
            "", "## prepare (issue 2)", "",
            f"- machine: {host}",
            f"- date: {dt.date.today().isoformat()}",
            f"- command: `{command}`",
            *lines, "",
        ]
        with open(args.results, "a") as f:
            f.write("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
