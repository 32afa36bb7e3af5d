"""Evaluation metrics on predicted probabilities: AUROC, patient bootstrap CIs, DeLong, thresholds.

Everything works on plain arrays: labels ``y`` (n, k) of 0/1 and scores ``p`` (n, k);
1-D inputs are treated as one class. A class with no positive or no negative case
has an undefined AUROC: it is NaN here, reported as n/a and left out of means.

Missing labels: a label may be NaN (float labels), meaning unknown for that image (the dataset
lacks the label, or its value is uncertain). Every per-class number uses only the rows whose
label for that class is known; a class with no known row, or with no positive or no negative
among its known rows, has NaN AUROC (never 0.5, never an error). Scores must be finite on every
row, known or not. Without any NaN label the code takes exactly the paths it took before (one
``isnan`` check per call).

- :func:`auroc` is rank based (midranks), so ties count one half exactly like
  ``sklearn.metrics.roc_auc_score``; all classes at once.
- :func:`bootstrap_auroc_ci` resamples *patients* (clusters) with replacement. A
  resample is a vector of patient multiplicities, i.e. integer weights per image;
  the weighted AUROC of every resample is computed from one sort per class and
  cumulative sums of negative weights (exact with ties), in blocks of resamples.
- :func:`delong_test` is DeLong et al. (1988) for two correlated ROC curves, in the
  fast midrank form of Sun & Xu (2014). It treats images as independent cases.
- :func:`paired_bootstrap_test` compares two models on the same images when patients have
  several images (NIH: ~3.6 per patient): the AUROC difference is resampled over *patients*
  (the same resample for both models), as pROC's ``roc.test(method = "bootstrap")`` does over cases.
- :func:`paired_auroc_test` picks between them: exact DeLong when every patient has one image,
  the patient bootstrap otherwise, and says which it used.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

THRESHOLD_METHODS = ("f1", "youden")


def _as_2d_known(y, p) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate labels/scores: (n, k) bool labels (missing -> False), the known mask and float64 scores.

    The known mask (n, k) is None when no label is missing (NaN), so callers keep their fast paths.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels and scores must have the same (n,) or (n, k) shape; got {y.shape} and {p.shape}")
    known = None
    if y.dtype != bool:
        if y.dtype.kind == "f":
            missing = np.isnan(y)
            if missing.any():
                known = ~missing
                y = np.where(known, y, 0)
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"labels must be 0/1 (or NaN: missing); row {row}, column {col} is {y[row, col]!r}")
        y = y.astype(bool)
    return y, known, p


def _as_2d(y, p) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels/scores and return them as (n, k) bool / float64 arrays; missing (NaN) labels refused."""
    yy, known, pp = _as_2d_known(y, p)
    if known is not None:
        row, col = np.argwhere(~known)[0]
        raise ValueError(f"labels must be 0/1 here; row {row}, column {col} is missing (NaN)")
    return yy, pp


def _with_missing(yy: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """Bool labels back to a label array metrics accept: as they are, or float with NaN where unknown."""
    return yy if known is None else np.where(known, yy.astype(np.float64), np.nan)


def _defined(yy: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    if known is None:
        return yy.any(axis=0) & (~yy).any(axis=0)
    return yy.any(axis=0) & (~yy & known).any(axis=0)


def _squeeze(values: np.ndarray, like) -> np.ndarray | float:
    """Return a scalar for 1-D input, the array otherwise."""
    return float(values[0]) if np.ndim(like) == 1 else values


def defined_classes(y) -> np.ndarray:
    """Boolean mask (k,) of classes with at least one positive and one negative case among their known labels.

    NaN labels are missing (neither positive nor negative); a class with no known label is not defined.
    """
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.dtype.kind == "f" and np.isnan(y).any():
        known = ~np.isnan(y)
        return _defined(np.where(known, y, 0).astype(bool), known)
    y = y.astype(bool)
    return y.any(axis=0) & (~y).any(axis=0)


def check_finite(p, image_ids=None, max_listed: int = 10) -> None:
    """Raise ``ValueError`` naming the rows whose predictions are NaN or infinite.

    ``image_ids`` (length n) names rows in the message; without it, row numbers are used.
    """
    p = np.asarray(p, dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(p.reshape(len(p), -1)).all(axis=1))
    if bad_rows.size == 0:
        return
    if image_ids is not None:
        ids = np.asarray(image_ids)
        names = [f"{ids[i]} (row {i})" for i in bad_rows[:max_listed]]
    else:
        names = [f"row {i}" for i in bad_rows[:max_listed]]
    more = f" and {bad_rows.size - max_listed} more" if bad_rows.size > max_listed else ""
    raise ValueError(f"{bad_rows.size} of {len(p)} rows have NaN/inf predictions: {', '.join(names)}{more}")


def auroc(y, p) -> np.ndarray | float:
    """Area under the ROC curve per class, equal to ``roc_auc_score`` (ties count 1/2).

    Returns an array (k,) for 2-D input (a float for 1-D); NaN where a class has no
    positive or no negative case. NaN labels are missing: each class is scored on its
    known rows only (``roc_auc_score`` on those rows), and a class with no known row,
    or no positive or no negative among them, is NaN.
    """
    yy, known, pp = _as_2d_known(y, p)
    return _squeeze(_auroc(yy, known, pp), y)


def _auroc(yy: np.ndarray, known: np.ndarray | None, pp: np.ndarray) -> np.ndarray:
    """AUROC (k,) of validated labels; columns with missing labels are ranked on their known rows."""
    if known is None:
        return _auroc_complete(yy, pp)
    out = np.full(yy.shape[1], np.nan)
    full = known.all(axis=0)
    if full.any():
        out[full] = _auroc_complete(yy[:, full], pp[:, full])
    for c in np.flatnonzero(~full):
        rows = known[:, c]
        if rows.any():
            out[c] = _auroc_complete(yy[rows, c : c + 1], pp[rows, c : c + 1])[0]
    return out


def _auroc_complete(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """Vectorised midrank AUROC (k,) of bool labels without missing values."""
    n_pos = yy.sum(axis=0).astype(np.float64)
    n_neg = len(yy) - n_pos
    ranks = rankdata(pp, method="average", axis=0)  # midranks: ties share their mean rank
    rank_sum = np.where(yy, ranks, 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _known_column(yy: np.ndarray, known: np.ndarray | None, pp: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of class ``c`` on its known rows (all rows when nothing is missing)."""
    if known is None:
        return yy[:, c], pp[:, c]
    rows = known[:, c]
    return yy[rows, c], pp[rows, c]


def auprc(y, p) -> np.ndarray | float:
    """Average precision per class (``sklearn.metrics.average_precision_score``) on the class's known rows.

    NaN without a positive among the known rows (so also for a class with no known row). A class whose
    known rows are all positive has AP 1, as sklearn gives (precision is 1 everywhere).
    """
    yy, known, pp = _as_2d_known(y, p)
    out = np.full(yy.shape[1], np.nan)
    for c in range(yy.shape[1]):
        t, s = _known_column(yy, known, pp, c)
        if t.any():
            out[c] = average_precision_score(t, s)
    return _squeeze(out, y)


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap confidence intervals of per-class and mean AUROC.

    ``samples`` (n_resamples, k) holds every resample's AUROC (NaN where a resample
    drew no positive or no negative case of a class); ``n_valid`` counts the resamples
    each interval is based on. ``mean_*`` bound the mean over the classes defined in
    the full sample. With missing labels a class counts its known rows only; a class
    with no known row, or no positive or negative among them, has NaN bounds and
    ``n_valid`` 0.
    """

    low: np.ndarray
    high: np.ndarray
    mean_low: float
    mean_high: float
    samples: np.ndarray
    n_valid: np.ndarray
    n_groups: int
    n_resamples: int
    seed: int
    alpha: float


def _class_plans(y: np.ndarray, p: np.ndarray, gid: np.ndarray, known: np.ndarray | None = None) -> list:
    """Per class: cluster ids of negatives sorted by score, and of positives with their tie window.

    For positive i, ``lo[i]``/``hi[i]`` are the numbers of negatives scoring strictly
    below / at most p_i, so its weighted win count is C[lo] + (C[hi] - C[lo]) / 2 with C
    the cumulative negative weight. Only a class's known rows (``known``, None: all) enter
    its plan. Returns None for classes with one label only (or no known row).
    """
    plans = []
    for c in range(y.shape[1]):
        pos, score, g = y[:, c], p[:, c], gid
        if known is not None and not known[:, c].all():
            rows = known[:, c]
            pos, score, g = pos[rows], score[rows], gid[rows]
        if pos.all() or not pos.any():
            plans.append(None)
            continue
        neg_idx = np.flatnonzero(~pos)
        neg_idx = neg_idx[np.argsort(score[neg_idx], kind="stable")]
        neg_scores = score[neg_idx]
        pos_scores = score[pos]
        lo = np.searchsorted(neg_scores, pos_scores, side="left")
        hi = np.searchsorted(neg_scores, pos_scores, side="right")
        plans.append((g[neg_idx], g[pos], lo, hi))
    return plans


def _auroc_from_counts(plans: list, counts: np.ndarray, n_rows: int) -> np.ndarray:
    """Weighted AUROC (b, k) for a block of resamples; ``counts`` (b, n_groups) are cluster multiplicities."""
    b = counts.shape[0]
    # Every product below is at most 2 * wmax^2 * n_rows: int32 while that fits (half the memory traffic).
    wmax = int(counts.max()) if counts.size else 0
    dtype = np.int32 if 2 * wmax * wmax * max(n_rows, 1) < 2**31 else np.int64
    counts = counts.astype(dtype, copy=False)
    out = np.full((b, len(plans)), np.nan)
    for c, plan in enumerate(plans):
        if plan is None:
            continue
        neg_gid, pos_gid, lo, hi = plan
        cum = np.zeros((b, len(neg_gid) + 1), dtype=dtype)
        np.cumsum(counts[:, neg_gid], axis=1, out=cum[:, 1:])
        w_pos = counts[:, pos_gid]
        twice_wins = (w_pos * (cum[:, lo] + cum[:, hi])).sum(axis=1, dtype=np.int64)
        pairs = w_pos.sum(axis=1, dtype=np.int64) * cum[:, -1].astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, c] = np.where(pairs > 0, twice_wins / (2.0 * pairs), np.nan)
    return out


def weighted_auroc(y, p, weights) -> np.ndarray:
    """AUROC per class with non-negative integer weights per image.

    ``weights`` is (n,) or (b, n) (one row per weighting); returns (b, k) — the same
    number ``roc_auc_score(..., sample_weight=w)`` gives, ties included. NaN labels are
    missing: a class uses its known rows only.
    """
    yy, known, pp = _as_2d_known(y, p)
    w = np.atleast_2d(np.asarray(weights))
    if w.shape[1] != len(yy) or not np.issubdtype(w.dtype, np.integer) or (w < 0).any():
        raise ValueError(f"weights must be non-negative integers of shape (n,) or (b, n) with n={len(yy)}")
    return _auroc_from_counts(_class_plans(yy, pp, np.arange(len(yy)), known), w, len(yy))


def patient_resamples(groups, n_rows: int, n_resamples: int, seed: int = 0, block: int = 100):
    """The patient bootstrap's draws, ``block`` resamples at a time: yields (b, n_rows) arrays, each row's
    multiplicity (its patient's; ``groups`` None: every row its own patient) in each resample. The same draws
    as :func:`bootstrap_auroc_ci`'s for the same seed and number of resamples, whatever ``block``."""
    gid = np.arange(n_rows) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = int(gid.max()) + 1
    rng = np.random.default_rng(seed)
    uniform = np.full(n_groups, 1.0 / n_groups)
    for start in range(0, n_resamples, block):
        yield rng.multinomial(n_groups, uniform, size=min(block, n_resamples - start))[:, gid]


def bootstrap_auroc_ci(
    y,
    p,
    groups=None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    block: int = 100,
) -> BootstrapCI:
    """Cluster-bootstrap percentile CIs of per-class and mean AUROC.

    Patients (``groups``, one id per image; default: every image its own cluster) are
    drawn with replacement, as many as there are, ``n_resamples`` times from
    ``np.random.default_rng(seed)``; an image's weight is its patient's multiplicity.
    Resamples are processed ``block`` at a time (memory ~ 4 * block * n bytes per array);
    the draws depend on ``seed`` and ``n_resamples`` only, not on ``block``.

    NaN labels are missing: all patients are drawn, and each class's AUROC is computed on
    the drawn copies of its known rows. A class with no known row, or no positive or no
    negative among them, has NaN bounds (and is left out of the mean).
    """
    yy, known, pp = _as_2d_known(y, p)
    check_finite(pp)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    if groups is None:
        gid = np.arange(len(yy))
    else:
        groups = np.asarray(groups)
        if groups.shape != (len(yy),):
            raise ValueError(f"groups must have one id per row ({len(yy)}); got shape {groups.shape}")
        _, gid = np.unique(groups, return_inverse=True)
    if len(gid) == 0:
        raise ValueError("no predictions to bootstrap")
    n_groups = int(gid.max()) + 1
    plans = _class_plans(yy, pp, gid, known)
    rng = np.random.default_rng(seed)
    uniform = np.full(n_groups, 1.0 / n_groups)
    samples = np.empty((n_resamples, yy.shape[1]))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        counts = rng.multinomial(n_groups, uniform, size=b)
        samples[start : start + b] = _auroc_from_counts(plans, counts, len(yy))

    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    n_valid = np.isfinite(samples).sum(axis=0)
    low = np.full(yy.shape[1], np.nan)
    high = np.full(yy.shape[1], np.nan)
    ok = n_valid > 0
    if ok.any():
        low[ok], high[ok] = np.nanpercentile(samples[:, ok], q, axis=0)
    defined = _defined(yy, known)
    mean_low = mean_high = float("nan")
    if defined.any():
        with warnings.catch_warnings():  # "Mean of empty slice" for resamples without a defined class
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(samples[:, defined], axis=1)
        if np.isfinite(means).any():
            mean_low, mean_high = (float(v) for v in np.nanpercentile(means, q))
    return BootstrapCI(low, high, mean_low, mean_high, samples, n_valid, n_groups, n_resamples, seed, alpha)


# --------------------------------------------------------------------------- thresholds


def choose_thresholds(y_val, p_val, method: str = "f1") -> np.ndarray:
    """Per-class decision thresholds chosen on validation predictions (predict positive if p >= t).

    ``"f1"`` maximizes F1 over the precision-recall curve; ``"youden"`` maximizes
    sensitivity + specificity - 1 over the ROC curve. NaN where a class has no
    positive (f1, youden) or no negative (youden) validation case. NaN labels are
    missing: a class is chosen on its known rows only (NaN with no known row).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}; got {method!r}")
    yy, known, pp = _as_2d_known(y_val, p_val)
    out = np.full(yy.shape[1], np.nan)
    for c in range(yy.shape[1]):
        t, s = _known_column(yy, known, pp, c)
        if not t.any() or (method == "youden" and t.all()):
            continue
        if method == "f1":
            precision, recall, thr = precision_recall_curve(t, s)
            with np.errstate(divide="ignore", invalid="ignore"):
                f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[: len(thr)]
            out[c] = thr[int(np.argmax(f1))]
        else:
            fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
            out[c] = thr[int(np.argmax(tpr - fpr))]
    return _squeeze(out, y_val)


def binary_metrics(y, p, thresholds) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, F1 and PPV per class at ``thresholds`` (predict positive if p >= t).

    A ratio with an empty denominator (or a NaN threshold) is NaN. NaN labels are missing:
    the counts are over each class's known rows (all NaN for a class with no known row).
    """
    yy, known, pp = _as_2d_known(y, p)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (yy.shape[1],))
    pred = pp >= thr
    tp = (pred & yy).sum(axis=0).astype(np.float64)  # an unknown label is False in yy: never a positive
    fn = (~pred & yy).sum(axis=0).astype(np.float64)
    if known is None:
        fp = (pred & ~yy).sum(axis=0).astype(np.float64)
        tn = (~pred & ~yy).sum(axis=0).astype(np.float64)
    else:  # ... nor, with ``& known``, a negative
        fp = (pred & ~yy & known).sum(axis=0).astype(np.float64)
        tn = (~pred & ~yy & known).sum(axis=0).astype(np.float64)

    def ratio(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = a / b
        r[(b == 0) | np.isnan(thr)] = np.nan
        return r

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": ratio(tp, tp + fp),
    }


# --------------------------------------------------------------------------- DeLong


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of H0: AUROC(a) == AUROC(b) (two-sided)."""

    auc_a: float
    auc_b: float
    z: float
    p_value: float

    def __iter__(self):  # allows ``auc_a, auc_b, z, p = delong_test(...)``
        return iter((self.auc_a, self.auc_b, self.z, self.p_value))


def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu (2014): AUCs (r,), V10 (r, m) over positives and V01 (r, n) over negatives.

    ``scores`` is (r, N); V10_i = P(X_i > Y) + P(X_i = Y)/2 over negatives Y, V01_j the
    same over positives against negative j, both from three midrankings.
    """
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_test(y, p_a, p_b) -> DeLongResult:
    """DeLong's test for two correlated ROC curves on the same cases (1-D inputs).

    Var(AUC_a - AUC_b) = c' S10 c / m + c' S01 c / n with c = (1, -1), S10/S01 the
    covariance matrices of the structural components over the m positives / n
    negatives. Identical rankings (zero variance, equal AUCs) give z = 0, p = 1; zero
    variance with different AUCs gives z = +-inf, p = 0 (as pROC). NaN AUCs when the
    labels have a single class; NaN z and p with fewer than 2 positives or negatives.
    NaN labels are missing: the test runs on the known rows only (all NaN when none is known).
    """
    if np.ndim(y) != 1 or np.ndim(p_a) != 1 or np.ndim(p_b) != 1:
        raise ValueError("delong_test takes one class at a time (1-D labels and scores)")
    yy, known, pa = _as_2d_known(y, p_a)
    pb = _as_2d_known(y, p_b)[2]
    scores = np.concatenate([pa, pb], axis=1).T  # (2, N)
    check_finite(scores.T)
    yy = yy[:, 0]
    if known is not None:
        yy, scores = yy[known[:, 0]], scores[:, known[:, 0]]
    m, n = int(yy.sum()), int((~yy).sum())
    if m == 0 or n == 0:
        return DeLongResult(math.nan, math.nan, math.nan, math.nan)
    aucs, v10, v01 = _structural_components(yy, scores)
    if m < 2 or n < 2:  # no variance estimate from a single case
        return DeLongResult(float(aucs[0]), float(aucs[1]), math.nan, math.nan)
    s10, s01 = np.cov(v10), np.cov(v01)
    c = np.array([1.0, -1.0])
    var = float(c @ s10 @ c / m + c @ s01 @ c / n)
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15 * max(1.0, diff * diff):
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    return DeLongResult(float(aucs[0]), float(aucs[1]), z, math.erfc(abs(z) / math.sqrt(2)))


# --------------------------------------------------------------------------- paired tests that respect patients


@dataclass(frozen=True)
class PairedTest:
    """Per-class paired comparison of two models (arrays of shape (k,)); ``method`` names the test used."""

    auc_a: np.ndarray
    auc_b: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    method: str


def _group_ids(groups, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have one id per row ({n}); got shape {groups.shape}")
    return np.unique(groups, return_inverse=True)[1]


def paired_bootstrap_test(y, p_a, p_b, groups=None, n_resamples: int = 2000, seed: int = 0,
                          block: int = 100) -> PairedTest:
    """Two-sided test of AUROC(a) == AUROC(b) per class, resampling patients.

    Each resample draws patients (``groups``) with replacement and weights both models' predictions by the same
    patient multiplicities, so the correlation between the models and within patients is kept. The standard
    error of the difference is the resamples' standard deviation; ``z = (AUC_a - AUC_b) / se`` and
    ``p = 2 (1 - Phi(|z|))`` (pROC's bootstrap test). Seeded: the same inputs give the same p-values.
    A zero standard error gives p = 1 for equal AUROCs and p = 0 otherwise; NaN for an undefined class.
    NaN labels are missing: a class uses its known rows only (NaN with no known row, or no positive or no
    negative among them).
    """
    yy, known, pa = _as_2d_known(y, p_a)
    pb = _as_2d_known(y, p_b)[2]
    if pa.shape != pb.shape:
        raise ValueError(f"the two models' scores differ in shape: {pa.shape} vs {pb.shape}")
    check_finite(pa)
    check_finite(pb)
    gid = _group_ids(groups, len(yy))
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    plans_a, plans_b = _class_plans(yy, pa, gid, known), _class_plans(yy, pb, gid, known)
    rng = np.random.default_rng(seed)
    uniform = np.full(n_groups, 1.0 / max(n_groups, 1))
    diffs = np.empty((n_resamples, yy.shape[1]))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        counts = rng.multinomial(n_groups, uniform, size=b)
        diffs[start:start + b] = (_auroc_from_counts(plans_a, counts, len(yy))
                                  - _auroc_from_counts(plans_b, counts, len(yy)))
    auc_a, auc_b = _auroc(yy, known, pa), _auroc(yy, known, pb)
    delta = auc_a - auc_b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(diffs, axis=0, ddof=1)
    z = np.full(yy.shape[1], np.nan)
    for c in range(yy.shape[1]):
        if not np.isfinite(delta[c]) or not np.isfinite(se[c]):
            continue
        if se[c] <= 1e-12 * max(1.0, abs(delta[c])):
            z[c] = 0.0 if delta[c] == 0 else math.copysign(math.inf, delta[c])
        else:
            z[c] = delta[c] / se[c]
    p = np.array([np.nan if np.isnan(v) else math.erfc(abs(v) / math.sqrt(2)) for v in z])
    return PairedTest(auc_a, auc_b, z, p, f"paired bootstrap over patients ({n_resamples} resamples, seed {seed})")


def one_image_per_patient(groups) -> bool:
    groups = np.asarray(groups)
    return len(np.unique(groups)) == len(groups)


def paired_auroc_test(y, p_a, p_b, groups=None, n_resamples: int = 2000, seed: int = 0) -> PairedTest:
    """DeLong (exact, per class) when each patient has one image; the paired patient bootstrap otherwise.

    NaN labels are missing: each class is tested on its known rows only.
    """
    yy, known, pa = _as_2d_known(y, p_a)
    pb = _as_2d_known(y, p_b)[2]
    if groups is None or one_image_per_patient(groups):
        labels = yy.astype(np.uint8) if known is None else _with_missing(yy, known)
        tests = [delong_test(labels[:, c], pa[:, c], pb[:, c]) for c in range(yy.shape[1])]
        arr = np.array([tuple(t) for t in tests], dtype=np.float64).reshape(-1, 4)
        return PairedTest(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], "DeLong (one image per patient)")
    return paired_bootstrap_test(_with_missing(yy, known), pa, pb, groups, n_resamples=n_resamples, seed=seed)
