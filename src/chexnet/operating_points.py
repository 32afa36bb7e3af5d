"""Operating points: per-label thresholds chosen on validation by a rule, and what they do on another split.

Rules (``--operating-point RULE[=VALUE]``), each chosen per label on that label's known validation rows,
predicting positive when ``p >= threshold``:

``f1``               the threshold of maximal F1 (the default; :func:`chexnet.metrics.choose_thresholds`)
``youden``           maximal Youden's J = sensitivity + specificity - 1
``sensitivity=V``    the highest threshold whose validation sensitivity is at least V (fewest false positives
                     for that sensitivity)
``specificity=V``    the lowest threshold whose validation specificity is at least V

A label without a positive (or, for youden and specificity, a negative) among its known rows gets NaN: no
threshold, never a made-up one. A rule met only by predicting nothing positive gives 1.0.

:func:`operating_table` gives, for each label at a threshold, sensitivity, specificity, PPV, NPV, F1 and the
prevalence of the evaluated split, each with a patient-bootstrap percentile CI (the draws of
:func:`chexnet.metrics.bootstrap_auroc_ci`) and, for the four ratios, a Wilson score interval (the
cross-check, exact in its assumptions where each patient has one image). A threshold fixed on validation is
held fixed in every resample; with ``rechoose`` (a rule chosen on the evaluated split itself) the rule is
applied again inside each resample, so the CI includes the choice.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from chexnet.metrics import choose_thresholds

RULES = ("f1", "youden", "sensitivity", "specificity")
RATIOS = ("sensitivity", "specificity", "ppv", "npv")
COLUMNS = ("sensitivity", "specificity", "ppv", "npv", "f1", "prevalence")
Z95 = 1.959963984540054


def parse_rule(text: str) -> tuple[str, float | None]:
    """``"f1"`` -> ("f1", None); ``"sensitivity=0.9"`` -> ("sensitivity", 0.9). Errors say what is allowed."""
    name, _, value = str(text).partition("=")
    name = name.strip().lower()
    if name not in RULES:
        raise ValueError(f"operating point {text!r}: the rule must be one of f1, youden, sensitivity=V, "
                         f"specificity=V")
    if name in ("f1", "youden"):
        if value:
            raise ValueError(f"operating point {text!r}: {name} takes no value")
        return name, None
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"operating point {text!r}: {name} needs a target in (0, 1], e.g. {name}=0.9") from None
    if not 0 < v <= 1:
        raise ValueError(f"operating point {text!r}: the target must be in (0, 1], got {v:g}")
    return name, v


def describe(rule: str) -> str:
    name, value = parse_rule(rule)
    return {"f1": "max F1", "youden": "max Youden's J"}.get(name) or f"{name} {value:g}"


def choose(y, p, rule: str = "f1") -> np.ndarray:
    """Per-label thresholds by ``rule`` on ``y``/``p`` ((N, labels); NaN labels missing)."""
    name, target = parse_rule(rule)
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if name in ("f1", "youden"):  # roc_curve's +inf (nothing positive) is 1.0 here, as below
        return np.minimum(np.atleast_1d(choose_thresholds(y, p, name)).astype(np.float64), 1.0)
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        k = np.isfinite(y[:, c])
        t, s = y[k, c].astype(bool), p[k, c]
        if not t.any() or (name == "specificity" and t.all()):
            continue
        fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
        thr = np.minimum(thr, 1.0)  # roc_curve's first threshold is +inf (nothing positive)
        if name == "sensitivity":
            ok = np.flatnonzero(tpr >= target - 1e-12)
            out[c] = thr[ok[0]]  # thresholds fall along the curve: the first that reaches the target is the highest
        else:
            ok = np.flatnonzero(1 - fpr >= target - 1e-12)
            out[c] = thr[ok[-1]]  # the last (lowest) threshold that still keeps the specificity
    return out


def counts(y, p, thresholds, weights=None) -> dict[str, np.ndarray]:
    """Weighted tp, fp, tn, fn per label at ``thresholds`` over each label's known rows."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    known = np.isfinite(y)
    pos, pred = (y == 1) & known, p >= np.asarray(thresholds, np.float64)
    neg = (y == 0) & known
    ww = w[:, None]
    return {"tp": (ww * (pred & pos)).sum(0), "fn": (ww * (~pred & pos)).sum(0),
            "fp": (ww * (pred & neg)).sum(0), "tn": (ww * (~pred & neg)).sum(0)}


def rates(c: dict, thresholds) -> dict[str, np.ndarray]:
    """The ratios of :data:`COLUMNS` from counts; NaN for an empty denominator or a NaN threshold."""
    def ratio(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.asarray(a / b, np.float64)
        r[(b == 0) | np.isnan(np.asarray(thresholds, np.float64))] = np.nan
        return r

    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    out = {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
           "npv": ratio(tn, tn + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["prevalence"] = np.where(tp + fn + tn + fp > 0, (tp + fn) / (tp + fn + tn + fp), np.nan)
    return out


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    phat = successes / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def operating_table(y, p, thresholds, labels, groups=None, n_resamples: int = 1000, seed: int = 0,
                    alpha: float = 0.05, rechoose: str | None = None) -> pd.DataFrame:
    """One row per label: threshold, n, positives, each of :data:`COLUMNS` with ``_low``/``_high`` (bootstrap)
    and, for :data:`RATIOS`, ``_wilson_low``/``_wilson_high``. ``rechoose``: a rule to apply again in each
    resample (the threshold was chosen on this split); None: ``thresholds`` are fixed."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    c = counts(y, p, thresholds)
    point = rates(c, thresholds)
    table = pd.DataFrame({"threshold": thresholds, "n": np.isfinite(y).sum(0), "positives": c["tp"] + c["fn"]},
                         index=pd.Index(list(labels), name="label"))
    for m in COLUMNS:
        table[m] = point[m]
    samples = _bootstrap(y, p, thresholds, groups, n_resamples, seed, rechoose)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    for m in COLUMNS:
        low, high = np.full(len(table), np.nan), np.full(len(table), np.nan)
        if samples is not None:
            for j in range(len(table)):
                s = samples[m][:, j]
                if np.isfinite(point[m][j]) and np.isfinite(s).any():
                    low[j], high[j] = np.percentile(s[np.isfinite(s)], q)
        table[f"{m}_low"], table[f"{m}_high"] = low, high
    denominators = {"sensitivity": ("tp", "fn"), "specificity": ("tn", "fp"), "ppv": ("tp", "fp"),
                    "npv": ("tn", "fn")}
    z = _z(alpha)
    for m, (a, b) in denominators.items():
        bounds = [wilson(c[a][j], c[a][j] + c[b][j], z) if np.isfinite(thresholds[j]) else (math.nan, math.nan)
                  for j in range(len(table))]
        table[f"{m}_wilson_low"] = [lo for lo, _ in bounds]
        table[f"{m}_wilson_high"] = [hi for _, hi in bounds]
    table["positives"] = table["positives"].astype(int)
    return table


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def _bootstrap(y, p, thresholds, groups, n_resamples, seed, rechoose):
    """{metric: (n_resamples, labels)} over :func:`chexnet.metrics.patient_resamples`' draws."""
    from chexnet.metrics import patient_resamples

    if n_resamples <= 0 or not len(y):
        return None
    out = {m: np.full((n_resamples, y.shape[1]), np.nan) for m in COLUMNS}
    draws = (row for block in patient_resamples(groups, len(y), n_resamples, seed) for row in block)
    for r, multiplicity in enumerate(draws):
        t = thresholds
        if rechoose is not None:
            rows = np.repeat(np.arange(len(y)), multiplicity)  # the resample as rows (a rule needs the curve)
            t = choose(y[rows], p[rows], rechoose)
        values = rates(counts(y, p, t, multiplicity.astype(np.float64)), t)
        for m in COLUMNS:
            out[m][r] = values[m]
    return out
