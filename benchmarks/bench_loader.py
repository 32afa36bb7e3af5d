"""Loader throughput from the uint8 cache with train augmentation, and per-worker memory.

Samples/s per core: DataLoader with num_workers=0 (everything in this one process) over the train split,
batches of 64, uint8 output: with ``--input-transform resize`` (default, the CheXNet recipe) whole 256 px rows
with random flips (the resize to 224 and normalisation run on the training device), with ``crop`` random 224
crops + flips. Then with N worker processes, reporting each worker's private memory after a full pass: the cache
is a shared read-only memmap, so private memory must stay far below the cache size.

    python benchmarks/bench_loader.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from pathlib import Path

import torch
from bench_common import make_cache
from torch.utils.data import DataLoader

from chexnet.data.cache import load_cache
from chexnet.data.dataset import open_split
from chexnet.preprocess import Preprocessing, input_transform


class FloatInLoader(torch.utils.data.Dataset):
    """The alternative design: float conversion, 3 channels and ImageNet normalization per sample in the loader."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return self.transform(x[None])[0], y


def private_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return -1
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty") if k in fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--input-transform", choices=["resize", "crop"], default="resize")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--work", default="/tmp/chexnet-bench-loader")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = make_cache(Path(args.work), args.images, args.size)
    _, index, meta = load_cache(cache)
    ds = open_split(cache, index, meta, "train", "train", args.input_size, args.input_transform)
    transform = input_transform(Preprocessing(args.size, args.input_size, args.input_transform))
    print(f"{len(ds)} train samples, cache {meta['count']} x {args.size}^2 = {meta['count'] * args.size ** 2 / 1e6:.1f} MB; "
          f"pickled dataset {len(pickle.dumps(ds))} bytes")
    rates = []
    for p in range(args.passes):
        ds.set_epoch(p)
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=0)
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            n += x.shape[0]
        rates.append(n / (time.perf_counter() - t0))
    print(f"num_workers=0 (one core): {max(rates):.0f} samples/s (best of {args.passes} passes; all: "
          f"{', '.join(f'{r:.0f}' for r in rates)})")
    side = args.size if args.input_transform == "resize" else args.input_size
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, side, side) and y.dtype == torch.float32

    # where should normalization run? per sample in the loader (float32, 3 channels: 12x the bytes) or per batch after
    t0, n = time.perf_counter(), 0
    for x, _ in DataLoader(FloatInLoader(ds, transform), batch_size=args.batch, shuffle=True, num_workers=0):
        n += x.shape[0]
    per_sample = n / (time.perf_counter() - t0)
    t0, n = time.perf_counter(), 0
    for x, _ in DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=0):
        transform(x)
        n += x.shape[0]
    per_batch = n / (time.perf_counter() - t0)
    print(f"normalization per sample in the loader: {per_sample:.0f} samples/s; uint8 loader + per-batch "
          f"normalization (same core, as on a CPU-only run): {per_batch:.0f} samples/s")

    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, persistent_workers=True)
    t0, n = time.perf_counter(), 0
    for _ in range(2):
        for x, _ in loader:
            n += x.shape[0]
    rate = n / (time.perf_counter() - t0)
    pids = [w.pid for w in loader._iterator._workers] if loader._iterator is not None else []
    mem = [private_kb(pid) / 1024 for pid in pids]
    print(f"num_workers={args.workers}: {rate:.0f} samples/s; worker private memory after 2 passes: "
          f"{', '.join(f'{m:.0f} MB' for m in mem)} (cache file {os.path.getsize(cache / 'images.u8') / 1e6:.0f} MB)")
    del loader
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "args": vars(args), "one_core_samples_per_s": max(rates), "per_sample_normalization": per_sample,
            "per_batch_normalization": per_batch, "workers_samples_per_s": rate, "worker_private_mb": mem}, indent=2))


if __name__ == "__main__":
    main()
