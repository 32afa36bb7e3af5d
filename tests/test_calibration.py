"""Calibration metrics held to their definitions: torchmetrics' binary ECE / MCE (recorded reference values),
hand computations for the bins, sklearn for Brier and log loss, slope 1 and intercept 0 on a calibrated
generator, missing labels excluded, and bootstrap CIs around the point estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from chexnet import calibration as C

# torchmetrics 1.4.0, binary_calibration_error(torch.tensor(p), torch.tensor(y).long(), n_bins=15, norm=...)
# on the data of _reference(n) (numpy's PCG64 draws are the same on every CPU)
TORCHMETRICS = {50: (0.1917447383901817, 0.5050120599211757), 1000: (0.10841378049177176, 0.19758359594352487)}


def _reference(n: int, rng=None):
    rng = rng or np.random.default_rng(12345)
    p = rng.random(n)
    y = (rng.random(n) < p ** 1.5).astype(float)
    return y, p


def test_ece_and_mce_equal_torchmetrics():
    rng = np.random.default_rng(12345)  # the two sets are drawn one after the other, as recorded
    for n in (50, 1000):
        y, p = _reference(n, rng)
        l1, top = TORCHMETRICS[n]
        assert C.ece(y, p) == pytest.approx(l1, abs=1e-6) and C.mce(y, p) == pytest.approx(top, abs=1e-6)


def test_bins_by_hand():
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])  # equal width (15 bins): [0.05], [0.15, 0.15], [0.95, 1.0]
    y = np.array([0, 1, 0, 1, 1.0])
    gaps = {0: abs(0.05 - 0), 2: abs(0.15 - 0.5), 14: abs(0.975 - 1)}
    assert C.ece(y, p) == pytest.approx((1 * gaps[0] + 2 * gaps[2] + 2 * gaps[14]) / 5)
    assert C.mce(y, p) == pytest.approx(max(gaps.values()))
    # equal mass, 2 bins over 5 sorted rows: the first 3, then 2 (as numpy.array_split)
    want = (3 * abs(np.mean([0.05, 0.15, 0.15]) - 1 / 3) + 2 * abs(np.mean([0.95, 1.0]) - 1)) / 5
    assert C.ece_mass(y, p, n_bins=2) == pytest.approx(want)
    weights = np.array([2, 1, 1, 1, 1.0])  # a bootstrap multiplicity counts as that many copies
    copies = np.array([0.05, 0.05, 0.15, 0.15, 0.95, 1.0]), np.array([0, 0, 1, 0, 1, 1.0])
    assert C.ece(y, p, weights=weights) == pytest.approx(C.ece(copies[1], copies[0]))
    assert C.ece_mass(y, p, 3, weights) == pytest.approx(C.ece_mass(copies[1], copies[0], 3))


def test_brier_and_nll_equal_sklearn_and_missing_labels_are_left_out():
    y, p = _reference(200)
    assert C.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    assert C.nll(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    y_missing = y.copy()
    y_missing[:50] = np.nan
    for f in (C.ece, C.ece_mass, C.mce, C.brier, C.nll):
        assert f(y_missing, p) == pytest.approx(f(y[50:], p[50:]))
    assert math.isnan(C.ece(np.full(3, np.nan), np.full(3, 0.5)))
    assert all(math.isnan(v) for v in C.slope_intercept(np.ones(5), np.full(5, 0.7)))  # one class: not defined


def test_a_calibrated_generator_has_slope_1_and_intercept_0_and_an_overconfident_one_a_smaller_slope():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 200_000)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(len(p)) < p).astype(float)
    slope, intercept = C.slope_intercept(y, p)
    assert slope == pytest.approx(1, abs=0.02) and intercept == pytest.approx(0, abs=0.02)
    sharp = 1 / (1 + np.exp(-2 * z))  # twice the logit: overconfident
    assert C.slope_intercept(y, sharp)[0] == pytest.approx(0.5, abs=0.02)
    shifted = 1 / (1 + np.exp(-(z + 1)))  # one logit too high everywhere: the intercept says -1
    assert C.slope_intercept(y, shifted)[1] == pytest.approx(-1, abs=0.03)


def test_the_table_has_every_metric_with_cis_around_it_and_a_mean_row():
    rng = np.random.default_rng(5)
    y1, p1 = _reference(300, rng)
    y2, p2 = _reference(300, rng)
    y2[:100] = np.nan
    y = np.column_stack([y1, y2, np.full(300, np.nan)])
    p = np.column_stack([p1, p2, p1])
    groups = np.repeat(np.arange(150), 2)
    table = C.calibration_table(y, p, ["A", "B", "C"], groups=groups, n_resamples=60, seed=1)
    assert list(table.index) == ["A", "B", "C", "Mean"] and table.loc["B", "n"] == 200
    for m in C.METRICS:
        assert table.loc["A", m] == pytest.approx(C.label_metrics(y1, p1)[m])
        for label in ("A", "B"):
            assert table.loc[label, f"{m}_low"] <= table.loc[label, m] + 1e-9 <= table.loc[label, f"{m}_high"] + 2e-9
        assert math.isnan(table.loc["C", m]) and math.isnan(table.loc["C", f"{m}_low"])  # not in this dataset
        assert table.loc["Mean", m] == pytest.approx(np.mean([table.loc["A", m], table.loc["B", m]]))
    again = C.calibration_table(y, p, ["A", "B", "C"], groups=groups, n_resamples=60, seed=1)
    assert again.equals(table)


def test_the_vectorised_metrics_equal_the_direct_ones_with_and_without_weights():
    rng = np.random.default_rng(9)
    y, p = _reference(500, rng)
    w = rng.integers(0, 3, 500).astype(float)
    for weights in (None, w):
        got = C.label_metrics(y, p, weights)
        assert got["ece"] == pytest.approx(C.ece(y, p, weights=weights))
        assert got["ece_mass"] == pytest.approx(C.ece_mass(y, p, weights=weights))
        assert got["mce"] == pytest.approx(C.mce(y, p, weights=weights))
        assert got["brier"] == pytest.approx(C.brier(y, p, weights)) and got["nll"] == pytest.approx(C.nll(y, p, weights))


def test_reliability_points():
    p = np.array([0.01, 0.02, 0.5, 0.52, 0.99])
    y = np.array([0, 0, 1, 0, 1.0])
    r = C.reliability(y, p, n_bins=10)
    assert r["n"].tolist() == [2, 2, 1] and r["observed"].tolist() == [0.0, 0.5, 1.0]
    assert r["mean_predicted"].tolist() == pytest.approx([0.015, 0.51, 0.99])
