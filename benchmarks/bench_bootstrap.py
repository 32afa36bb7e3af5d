"""Benchmark: patient bootstrap of per-class AUROC at the size of NIH's official test list.

    python benchmarks/bench_bootstrap.py                       # 25,596 x 14, 1,000 resamples
    python benchmarks/bench_bootstrap.py --resamples 200 --repeat 1

Labels and patient clusters are real when the NIH metadata is found (a seeded random
set of whole patients from Data_Entry_2017_v2020.csv.gz until 25,596 images); scores
are synthetic (label signal + noise, float32 and rounded to 3 decimals, so ties
occur). It times two cluster structures: those patients, and the worst case where
every image is its own cluster. Target (issue 4): <= 30 s for 1,000 resamples on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np

from bench_common import cpu_model

from chexnet.labels import NUM_CLASSES, parse_findings
from chexnet.metrics import auroc, bootstrap_auroc_ci

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared/data/nih/Data_Entry_2017_v2020.csv.gz"


def load_case(n_images: int, metadata: Path, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels (n, 14) and patient ids: real NIH ones when ``metadata`` exists, else synthetic."""
    rng = np.random.default_rng(seed)
    if metadata.is_file():
        import pandas as pd

        df = pd.read_csv(metadata, usecols=["Finding Labels", "Patient ID"])
        patients = rng.permutation(df["Patient ID"].unique())
        sizes = df.groupby("Patient ID").size().loc[patients].to_numpy()
        keep = set(patients[: int(np.searchsorted(np.cumsum(sizes), n_images)) + 1])
        df = df[df["Patient ID"].isin(keep)].iloc[:n_images]
        y = np.stack([parse_findings(t) for t in df["Finding Labels"]])
        return y, df["Patient ID"].to_numpy(), f"NIH labels/patients from {metadata.name}"
    prevalence = np.linspace(0.005, 0.2, NUM_CLASSES)
    y = (rng.random((n_images, NUM_CLASSES)) < prevalence).astype(np.uint8)
    return y, rng.integers(0, n_images // 9, n_images), "synthetic labels, ~9 images per patient"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=25_596)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per case; the best is reported")
    ap.add_argument("--metadata", type=Path, default=DEFAULT_METADATA)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    y, patients, source = load_case(args.images, args.metadata, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    scores = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 2)))
    p = np.round(scores.astype(np.float32), 3)

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; numpy {np.__version__}; date {datetime.date.today()}")
    print(f"data: {y.shape[0]} images x {y.shape[1]} classes, {len(np.unique(patients))} patients ({source})")
    print(f"positives per class: {y.sum(axis=0).tolist()}; distinct scores: {len(np.unique(p))}")
    point = auroc(y, p)
    for name, groups in (("patients", patients), ("images (worst case)", None)):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ci = bootstrap_auroc_ci(y, p, groups=groups, n_resamples=args.resamples, seed=args.seed)
            times.append(time.perf_counter() - t0)
        print(
            f"clusters = {name:20s} groups={ci.n_groups:6d} resamples={args.resamples}: "
            f"best {min(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}); "
            f"mean AUROC {np.nanmean(point):.4f} [{ci.mean_low:.4f}, {ci.mean_high:.4f}]"
        )


if __name__ == "__main__":
    main()
