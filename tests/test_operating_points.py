"""Operating points: each rule's threshold does what it says on validation, the table's CIs cover their point
estimates, Wilson agrees with the bootstrap where each patient has one image, and missing labels are left out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chexnet import operating_points as O
from chexnet.metrics import binary_metrics


def _scores(n: int, seed: int, prevalence: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * (2 * y - 1))))
    return y, p


def test_rules_are_parsed_and_bad_ones_named():
    assert O.parse_rule("f1") == ("f1", None) and O.parse_rule("Sensitivity=0.9") == ("sensitivity", 0.9)
    for bad, why in [("recall", "must be one of"), ("sensitivity", "needs a target"), ("youden=1", "takes no"),
                     ("specificity=1.5", r"in \(0, 1\]")]:
        with pytest.raises(ValueError, match=why):
            O.parse_rule(bad)
    assert O.describe("sensitivity=0.9") == "sensitivity 0.9"


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_a_target_sensitivity_or_specificity_is_met_on_validation_at_the_tightest_threshold(target):
    y, p = _scores(2000, 1)
    y2, p2 = y[:, None], p[:, None]
    t_sens = O.choose(y2, p2, f"sensitivity={target}")[0]
    m = binary_metrics(y2, p2, [t_sens])
    assert m["sensitivity"][0] >= target
    above = np.sort(p[y == 1])[np.sort(p[y == 1]) > t_sens]
    if len(above):  # the next score up would miss the target: the threshold is the highest that meets it
        assert binary_metrics(y2, p2, [above[0]])["sensitivity"][0] < target
    t_spec = O.choose(y2, p2, f"specificity={target}")[0]
    assert binary_metrics(y2, p2, [t_spec])["specificity"][0] >= target
    below = np.sort(p)[np.sort(p) < t_spec]
    if len(below):
        assert binary_metrics(y2, p2, [below[-1]])["specificity"][0] < target


def test_a_label_without_positives_gets_no_threshold():
    y = np.column_stack([np.zeros(50), np.full(50, np.nan)])
    p = np.random.default_rng(0).random((50, 2))
    for rule in ("f1", "youden", "sensitivity=0.9", "specificity=0.9"):
        assert np.isnan(O.choose(y, p, rule)).all()


def test_the_table_s_cis_cover_the_estimates_and_wilson_agrees_on_one_image_per_patient():
    y, p = _scores(3000, 2)
    yv, pv = _scores(3000, 3)
    thresholds = O.choose(yv[:, None], pv[:, None], "youden")
    table = O.operating_table(y[:, None], p[:, None], thresholds, ["A"], n_resamples=400, seed=0)
    row = table.loc["A"]
    want = binary_metrics(y[:, None], p[:, None], thresholds)
    assert row["sensitivity"] == pytest.approx(want["sensitivity"][0]) and row["prevalence"] == pytest.approx(y.mean())
    for m in O.COLUMNS:
        assert row[f"{m}_low"] <= row[m] <= row[f"{m}_high"]
    for m in O.RATIOS:
        assert abs(row[f"{m}_wilson_low"] - row[f"{m}_low"]) < 0.02
        assert abs(row[f"{m}_wilson_high"] - row[f"{m}_high"]) < 0.02
    npv = ((p < thresholds[0]) & (y == 0)).sum() / (p < thresholds[0]).sum()
    assert row["npv"] == pytest.approx(npv)


def test_rechoosing_in_each_resample_widens_the_interval_and_missing_rows_are_left_out():
    y, p = _scores(600, 4)
    t = O.choose(y[:, None], p[:, None], "f1")
    fixed = O.operating_table(y[:, None], p[:, None], t, ["A"], n_resamples=300, seed=1)
    again = O.operating_table(y[:, None], p[:, None], t, ["A"], n_resamples=300, seed=1, rechoose="f1")
    width = lambda tab: tab.loc["A", "f1_high"] - tab.loc["A", "f1_low"]  # noqa: E731
    assert width(again) >= width(fixed) * 0.9 and again.loc["A", "f1_low"] != fixed.loc["A", "f1_low"]  # the choice varies too
    y_missing = y.copy()
    y_missing[:100] = np.nan
    part = O.operating_table(y_missing[:, None], p[:, None], t, ["A"], n_resamples=0)
    assert part.loc["A", "n"] == 500 and math.isnan(part.loc["A", "sensitivity_low"])
    assert part.loc["A", "sensitivity"] == pytest.approx(
        binary_metrics(y[100:, None], p[100:, None], t)["sensitivity"][0])
