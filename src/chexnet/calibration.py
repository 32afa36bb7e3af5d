"""What predicted probabilities mean: calibration metrics per label, with patient-bootstrap CIs.

The contract, for labels ``y`` (1, 0, NaN = missing) and probabilities ``p`` of one label, optional row
``weights`` (a bootstrap resample's patient multiplicities; default 1), computed on the known rows only:

``ece``            expected calibration error, equal-width bins (``n_bins`` = 15, the torchmetrics convention):
                   bin ``k`` holds ``k/n <= p < (k+1)/n`` (the last bin includes 1), and
                   ECE = sum over non-empty bins of ``W_b / W * |mean_b(p) - mean_b(y)|`` (weighted means);
                   equals ``torchmetrics.functional.classification.binary_calibration_error(norm="l1")``
``ece_mass``       the same over equal-mass bins (Nixon et al. 2019, "adaptive"): rows sorted by ``p`` (stable), row
                   ``i`` in bin ``floor(n_bins * W_before_i / W)``, ``W_before_i`` the weight of the rows before it
                   (unit weights: bins of N // n_bins or one more rows, the larger first, as ``numpy.array_split``)
``mce``            maximum calibration error: the largest ``|mean_b(p) - mean_b(y)|`` over non-empty equal-width bins
``brier``          mean of ``(p - y)^2`` (sklearn's ``brier_score_loss``)
``nll``            mean negative log-likelihood, ``p`` clipped to [1e-7, 1 - 1e-7] (sklearn's ``log_loss``)
``slope``,         logistic recalibration (Cox 1958; Van Calster et al. 2019): ``logit P(y=1) = a + b logit(p)`` by
``intercept``      maximum likelihood; the slope is ``b``, the intercept is ``a`` fitted with ``b`` fixed at 1
                   (calibration-in-the-large). A calibrated model has slope 1 and intercept 0; slope < 1 means
                   overconfident predictions. Needs both classes among the known rows.

A label with no known row (or, for slope and intercept, only one class) gives NaN: not computed, never 0.
:func:`calibration_table` gives every metric per label with percentile CIs from the patient bootstrap of
:func:`chexnet.metrics.bootstrap_auroc_ci` (the same draws for the same seed and number of resamples).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

N_BINS = 15
EPS = 1e-7
METRICS = ("ece", "ece_mass", "mce", "brier", "nll", "slope", "intercept")
LOWER_IS_BETTER = {"ece": True, "ece_mass": True, "mce": True, "brier": True, "nll": True}


def _known(y, p, weights):
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(y) & (w > 0)
    return y[keep], p[keep], w[keep]


def _bin_gaps(y, p, w, bins) -> tuple[np.ndarray, np.ndarray]:
    """Per non-empty bin: its weight share and |mean p - mean y|."""
    n = int(bins.max()) + 1 if len(bins) else 0
    wb = np.bincount(bins, weights=w, minlength=n)
    pb = np.bincount(bins, weights=w * p, minlength=n)
    yb = np.bincount(bins, weights=w * y, minlength=n)
    used = wb > 0
    return wb[used] / w.sum(), np.abs(pb[used] - yb[used]) / wb[used]


def _width_bins(p, n_bins) -> np.ndarray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def ece(y, p, n_bins: int = N_BINS, weights=None) -> float:
    y, p, w = _known(y, p, weights)
    if not len(y):
        return math.nan
    share, gap = _bin_gaps(y, p, w, _width_bins(p, n_bins))
    return float((share * gap).sum())


def ece_mass(y, p, n_bins: int = N_BINS, weights=None) -> float:
    y, p, w = _known(y, p, weights)
    if not len(y):
        return math.nan
    order = np.argsort(p, kind="stable")
    before = np.concatenate(([0.0], np.cumsum(w[order])[:-1]))
    bins = np.empty(len(p), np.int64)
    bins[order] = np.minimum((n_bins * before / w.sum()).astype(np.int64), n_bins - 1)
    share, gap = _bin_gaps(y, p, w, bins)
    return float((share * gap).sum())


def mce(y, p, n_bins: int = N_BINS, weights=None) -> float:
    y, p, w = _known(y, p, weights)
    if not len(y):
        return math.nan
    return float(_bin_gaps(y, p, w, _width_bins(p, n_bins))[1].max())


def brier(y, p, weights=None) -> float:
    y, p, w = _known(y, p, weights)
    return float(np.average((p - y) ** 2, weights=w)) if len(y) else math.nan


def nll(y, p, weights=None) -> float:
    y, p, w = _known(y, p, weights)
    if not len(y):
        return math.nan
    q = np.clip(p, EPS, 1 - EPS)
    return float(np.average(-(y * np.log(q) + (1 - y) * np.log1p(-q)), weights=w))


def logit(p) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def _newton_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, offset: np.ndarray, fit_slope: bool,
                     steps: int = 50) -> tuple[float, float]:
    """Weighted ML of ``logit P = a + b x + offset`` (b fixed at 0 without ``fit_slope``): (a, b)."""
    a, b = _newton_many(x, y, np.asarray(w, np.float64)[None, :], offset, fit_slope, steps)
    return float(a[0]), float(b[0])


def _newton_many(x, y, W, offset, fit_slope: bool, steps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_newton_logistic` for each row of weights ``W`` (R, n) at once: arrays (a, b) of length R."""
    from scipy.special import expit

    R = W.shape[0]
    a, b = np.zeros(R), np.zeros(R)
    for _ in range(steps):
        mu = expit(a[:, None] + (b[:, None] * x if fit_slope else 0.0) + offset)
        r, v = W * (y - mu), W * mu * (1 - mu)
        g0, h00 = r.sum(1), v.sum(1) + 1e-12
        if fit_slope:
            g1, h01, h11 = r @ x, v @ x, v @ (x * x) + 1e-12
            det = h00 * h11 - h01 * h01
            da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        else:
            da, db = g0 / h00, np.zeros(R)
        a, b = a + da, b + db
        if max(np.abs(da).max(), np.abs(db).max()) < 1e-10:
            break
    return a, b


def slope_intercept(y, p, weights=None) -> tuple[float, float]:
    """(calibration slope, calibration intercept) of the module docstring; NaN without both classes."""
    y, p, w = _known(y, p, weights)
    if not len(y):
        return math.nan, math.nan
    m = _weighted_metrics(y, p, w[None, :])
    return float(m[0, METRICS.index("slope")]), float(m[0, METRICS.index("intercept")])


def _weighted_metrics(y: np.ndarray, p: np.ndarray, W: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Every metric of :data:`METRICS` for each row of weights ``W`` (R, n) over known rows ``y``, ``p``: (R, 7).
    One implementation for the point estimate (one row of weights) and the bootstrap (one row per resample)."""
    R = W.shape[0]
    out = np.full((R, len(METRICS)), np.nan)
    total = W.sum(1)
    ok = total > 0
    if not len(y) or not ok.any():
        return out
    tot = np.where(ok, total, 1.0)
    onehot = np.zeros((len(p), n_bins))
    onehot[np.arange(len(p)), _width_bins(p, n_bins)] = 1.0
    wb, pb, yb = W @ onehot, W @ (onehot * p[:, None]), W @ (onehot * y[:, None])
    gap = np.abs(pb - yb)
    out[:, 0] = gap.sum(1) / tot
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:, 2] = np.where(wb > 0, gap / np.where(wb > 0, wb, 1.0), -np.inf).max(1)
    order = np.argsort(p, kind="stable")
    ws = W[:, order]
    before = np.cumsum(ws, axis=1) - ws
    bins = np.minimum((n_bins * before / tot[:, None]).astype(np.int64), n_bins - 1)
    flat = (np.arange(R)[:, None] * n_bins + bins).ravel()
    diff = np.bincount(flat, weights=(ws * (p[order] - y[order])).ravel(), minlength=R * n_bins)
    out[:, 1] = np.abs(diff.reshape(R, n_bins)).sum(1) / tot
    q = np.clip(p, EPS, 1 - EPS)
    out[:, 3] = W @ ((p - y) ** 2) / tot
    out[:, 4] = W @ (-(y * np.log(q) + (1 - y) * np.log1p(-q))) / tot
    pos = W @ y
    both = ok & (pos > 0) & (pos < total)
    if both.any():
        z = logit(p)
        _, slope = _newton_many(z, y, W[both], np.zeros_like(z), fit_slope=True)
        intercept, _ = _newton_many(z, y, W[both], z, fit_slope=False)
        out[both, 5], out[both, 6] = slope, intercept
    out[~ok] = np.nan
    return out


def label_metrics(y, p, weights=None, n_bins: int = N_BINS) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one label."""
    y, p, w = _known(y, p, weights)
    if not len(y):
        return {m: math.nan for m in METRICS}
    return dict(zip(METRICS, map(float, _weighted_metrics(y, p, w[None, :], n_bins)[0])))


def reliability(y, p, n_bins: int = N_BINS) -> pd.DataFrame:
    """The reliability diagram's points for one label: per non-empty equal-width bin its range, count, mean
    predicted probability and observed frequency (known rows only)."""
    y, p, w = _known(y, p, None)
    bins = _width_bins(p, n_bins)
    rows = []
    for b in np.unique(bins):
        m = bins == b
        rows.append({"bin_low": b / n_bins, "bin_high": (b + 1) / n_bins, "n": int(m.sum()),
                     "mean_predicted": float(p[m].mean()), "observed": float(y[m].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_predicted", "observed"])


def calibration_table(y, p, labels, groups=None, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                      n_bins: int = N_BINS) -> pd.DataFrame:
    """One row per label (and ``Mean``: the mean over labels with a value) with every metric and its
    ``<metric>_low`` / ``<metric>_high`` patient-bootstrap percentile bounds (``n_resamples`` 0: no CIs), plus
    ``n`` (known rows) and ``positives``. ``y``, ``p``: (N, labels); ``groups``: a patient id per row."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    labels = list(labels)
    point = np.array([[label_metrics(y[:, c], p[:, c], None, n_bins)[m] for m in METRICS]
                      for c in range(len(labels))]).reshape(len(labels), len(METRICS))
    table = pd.DataFrame(point, index=pd.Index(labels, name="label"), columns=list(METRICS))
    table.insert(0, "n", np.isfinite(y).sum(axis=0))
    table.insert(1, "positives", np.nansum(y, axis=0).astype(int))
    samples = _bootstrap(y, p, groups, n_resamples, seed, n_bins)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    mean = {"n": int(table["n"].sum()), "positives": int(table["positives"].sum())}
    for j, m in enumerate(METRICS):
        col = point[:, j]
        mean[m] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
        low, high = np.full(len(labels), np.nan), np.full(len(labels), np.nan)
        mean_low = mean_high = math.nan
        if samples is not None:
            s = samples[:, :, j]
            for c in range(len(labels)):
                ok = np.isfinite(s[:, c])
                if ok.any() and np.isfinite(col[c]):
                    low[c], high[c] = np.percentile(s[ok, c], q)
            defined = np.isfinite(col)
            if defined.any():
                means = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in s[:, defined]])
                if np.isfinite(means).any():
                    mean_low, mean_high = np.nanpercentile(means, q)
        table[f"{m}_low"], table[f"{m}_high"] = low, high
        mean[f"{m}_low"], mean[f"{m}_high"] = float(mean_low), float(mean_high)
    table.loc["Mean"] = pd.Series(mean)
    table[["n", "positives"]] = table[["n", "positives"]].astype(int)
    return table


def _bootstrap(y, p, groups, n_resamples: int, seed: int, n_bins: int, block: int = 100) -> np.ndarray | None:
    """(n_resamples, labels, metrics) over patient resamples drawn as chexnet.metrics.bootstrap_auroc_ci draws
    (``block`` resamples at a time: memory ~ 8 * block * rows bytes per label)."""
    from chexnet.metrics import patient_resamples

    if n_resamples <= 0 or not len(y):
        return None
    out = np.full((n_resamples, y.shape[1], len(METRICS)), np.nan)
    start = 0
    for counts in patient_resamples(groups, len(y), n_resamples, seed, block):
        b, weights = len(counts), counts.astype(np.float64)
        for c in range(y.shape[1]):
            k = np.isfinite(y[:, c])
            if k.any():
                out[start:start + b, c] = _weighted_metrics(y[k, c], p[k, c], weights[:, k], n_bins)
        start += b
    return out
