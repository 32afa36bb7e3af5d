"""The clinical part of an evaluation: what the probabilities mean and what the operating points do.

:func:`write_calibration` writes ``calibration.csv`` (:func:`chexnet.calibration.calibration_table`: per label
and Mean, ECE (equal-width and equal-mass), MCE, Brier, NLL, calibration slope and intercept, each with its
patient-bootstrap CI) and ``reliability.png``; :func:`write_operating_points` writes ``operating_points.csv``
(:func:`chexnet.operating_points.operating_table` per rule: threshold, sensitivity, specificity, PPV, NPV, F1,
prevalence with bootstrap CIs and Wilson intervals). Both return a Markdown section for report.md and a
JSON-able dict for metrics.json. Labels without a known value in the split have NaN (blank cells), as elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet import calibration, operating_points
from chexnet.fileio import atomic_write
from chexnet.plots import MEAN_ROW, plot_reliability


def _ci(row, m: str, digits: int = 3) -> str:
    v, lo, hi = row[m], row.get(f"{m}_low", math.nan), row.get(f"{m}_high", math.nan)
    if not np.isfinite(v):
        return ""
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(lo) else f"{v:.{digits}f}"


def write_calibration(out_dir: Path, y, p, patients, names, n_resamples: int, seed: int, alpha: float,
                      calibrated: str | None = None, plot: bool = True) -> tuple[pd.DataFrame, str, dict]:
    """calibration.csv and (with ``plot``) reliability.png; (table, report.md section, metrics.json entry)."""
    table = calibration.calibration_table(y, p, names, groups=patients, n_resamples=n_resamples, seed=seed,
                                          alpha=alpha)
    atomic_write(out_dir / "calibration.csv", table.to_csv(float_format="%.6f"))
    if plot:
        plot_reliability(np.asarray(y, np.float64), np.asarray(p, np.float64), list(names), out_dir / "reliability.png")
    level = int(round(100 * (1 - alpha)))
    what = (f"calibrated probabilities ({calibrated} scaling fitted on validation, chexnet calibrate)" if calibrated
            else "the model's own probabilities (no calibrator: chexnet calibrate fits one)")
    lines = ["## Calibration", "", f"Of {what}, on this split. [{level}% CI]: percentile bootstrap over patients. "
             f"ECE: equal-width bins ({calibration.N_BINS}); ECE (mass): equal-mass bins; slope 1 and intercept 0 "
             "are perfect calibration (slope < 1: too confident). Also in `calibration.csv`"
             + ("; reliability diagrams in `reliability.png`." if plot else "."), "",
             "| label | n | ECE | ECE (mass) | MCE | Brier | NLL | slope | intercept |",
             "|---|---:|---|---|---|---|---|---|---|"]
    for name, row in table.iterrows():
        lines.append(f"| {name} | {int(row['n'])} | " + " | ".join(_ci(row, m) for m in calibration.METRICS) + " |")
    lines += ["", "![Reliability](reliability.png)" if plot else "", ""]
    entry = {"probabilities": "calibrated" if calibrated else "raw", "method": calibrated,
             "per_label": table.drop(index=MEAN_ROW).to_dict(orient="index"), "mean": table.loc[MEAN_ROW].to_dict()}
    return table, "\n".join(lines), entry


def write_operating_points(out_dir: Path, y, p, patients, names, rules: dict, source: str, n_resamples: int,
                           seed: int, alpha: float, rechoose: bool = False) -> tuple[pd.DataFrame, str, dict]:
    """operating_points.csv for ``rules`` ({rule: thresholds, one per label}); ``source`` says where the
    thresholds were chosen: held fixed in the bootstrap, or, with ``rechoose`` (chosen on this very split),
    each rule chosen again inside every resample."""
    tables = []
    for rule, thresholds in rules.items():
        t = operating_points.operating_table(y, p, thresholds, names, groups=patients, n_resamples=n_resamples,
                                             seed=seed, alpha=alpha, rechoose=rule if rechoose else None)
        t.insert(0, "rule", rule)
        tables.append(t)
    table = pd.concat(tables) if tables else pd.DataFrame()
    atomic_write(out_dir / "operating_points.csv", table.to_csv(float_format="%.6f"))
    level = int(round(100 * (1 - alpha)))
    held = "" if rechoose else ", held fixed"
    lines = ["## Operating points", "", f"Thresholds {source}{held}; each metric with its {level}% patient-"
             "bootstrap CI (Wilson intervals, a cross-check where each patient has one image, are in "
             "`operating_points.csv`). Prevalence is this split's.", ""]
    for rule in rules:
        lines += [f"**{operating_points.describe(rule)}** (`{rule}`)", "",
                  "| label | threshold | sensitivity | specificity | PPV | NPV | F1 | prevalence |",
                  "|---|---:|---|---|---|---|---|---|"]
        for name, row in table[table["rule"] == rule].iterrows():
            thr = f"{row['threshold']:.4f}" if np.isfinite(row["threshold"]) else "none"
            lines.append(f"| {name} | {thr} | " + " | ".join(_ci(row, m) for m in operating_points.COLUMNS) + " |")
        lines.append("")
    entry = {rule: table[table["rule"] == rule].drop(columns="rule").to_dict(orient="index") for rule in rules}
    return table, "\n".join(lines), {"thresholds_from": source, "rules": entry}
