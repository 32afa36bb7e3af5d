"""chexnet.metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from chexnet import metrics


def make_data(n, k=14, seed=0, prevalence=0.2, decimals=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < prevalence).astype(np.uint8)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 1.2 * y - 1)))
    return y, (np.round(p, decimals) if decimals is not None else p)


@pytest.mark.parametrize("decimals", [None, 2, 1])  # 1 decimal: heavy ties
def test_auroc_equals_sklearn_including_ties(decimals):
    y, p = make_data(400, decimals=decimals)
    expected = [roc_auc_score(y[:, c], p[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(metrics.auroc(y, p), expected, rtol=0, atol=1e-12)
    assert metrics.auroc(y[:, 3], p[:, 3]) == pytest.approx(expected[3], abs=1e-12)


def test_auroc_single_class_is_nan():
    y, p = make_data(100, k=3)
    y[:, 0] = 0  # no positives
    y[:, 2] = 1  # no negatives
    out = metrics.auroc(y, p)
    assert np.isnan(out[0]) and np.isnan(out[2]) and np.isfinite(out[1])
    assert metrics.defined_classes(y).tolist() == [False, True, False]
    assert np.isnan(metrics.auprc(y, p)[0])


def test_auroc_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="row 1, column 0"):
        metrics.auroc(np.array([[0], [2]]), np.array([[0.1], [0.2]]))


def test_auprc_equals_sklearn():
    y, p = make_data(300, decimals=2)
    expected = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(metrics.auprc(y, p), expected, atol=1e-12)


def test_weighted_auroc_equals_sklearn_sample_weight():
    y, p = make_data(300, k=5, decimals=1, seed=3)
    w = np.random.default_rng(4).integers(0, 4, size=(6, 300))
    expected = [[roc_auc_score(y[:, c], p[:, c], sample_weight=row) for c in range(5)] for row in w]
    np.testing.assert_allclose(metrics.weighted_auroc(y, p, w), expected, atol=1e-12)


def test_bootstrap_contains_point_estimate_and_is_seeded():
    y, p = make_data(1500, decimals=3)
    patients = np.arange(1500) // 3
    ci = metrics.bootstrap_auroc_ci(y, p, groups=patients, n_resamples=300, seed=7)
    point = metrics.auroc(y, p)
    assert ci.n_groups == 500 and ci.samples.shape == (300, 14)
    assert np.all(ci.low < point) and np.all(point < ci.high)
    assert ci.mean_low < np.mean(point) < ci.mean_high
    again = metrics.bootstrap_auroc_ci(y, p, groups=patients, n_resamples=300, seed=7)
    np.testing.assert_array_equal(ci.samples, again.samples)
    np.testing.assert_array_equal(ci.samples, metrics.bootstrap_auroc_ci(y, p, patients, 300, seed=7, block=7).samples)
    other = metrics.bootstrap_auroc_ci(y, p, groups=patients, n_resamples=300, seed=8)
    assert not np.array_equal(ci.samples, other.samples)


def test_bootstrap_narrows_as_n_grows():
    widths = []
    for n in (400, 4000):
        y, p = make_data(n, seed=1)
        ci = metrics.bootstrap_auroc_ci(y, p, groups=np.arange(n) // 4, n_resamples=200)
        widths.append(ci.high - ci.low)
    assert np.all(widths[1] < widths[0])
    assert np.mean(widths[1]) < 0.5 * np.mean(widths[0])  # ~ 1/sqrt(10)


def test_bootstrap_resamples_patients_not_images():
    # Every patient has 5 identical images: an image bootstrap sees 5x the data it has.
    y, p = make_data(300, k=2, seed=2)
    y, p, patients = np.repeat(y, 5, axis=0), np.repeat(p, 5, axis=0), np.repeat(np.arange(300), 5)
    by_patient = metrics.bootstrap_auroc_ci(y, p, groups=patients, n_resamples=400)
    by_image = metrics.bootstrap_auroc_ci(y, p, n_resamples=400)
    ratio = (by_patient.high - by_patient.low) / (by_image.high - by_image.low)
    assert np.all(ratio > 1.6)  # ~ sqrt(5)


def test_bootstrap_na_class_left_out_of_mean():
    y, p = make_data(600, k=3, seed=5)
    y[:, 1] = 0
    ci = metrics.bootstrap_auroc_ci(y, p, n_resamples=100)
    assert np.isnan(ci.low[1]) and np.isnan(ci.high[1]) and ci.n_valid[1] == 0
    means = np.nanmean(ci.samples[:, [0, 2]], axis=1)
    assert ci.mean_low == pytest.approx(np.percentile(means, 2.5))
    assert ci.mean_high == pytest.approx(np.percentile(means, 97.5))


def delong_bruteforce(y, a, b):
    """DeLong (1988) from its definition: explicit loops over positive/negative pairs."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)

    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)]
    auc = [sum(v) / m for v in v10]

    def cov(u, v):
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((x - mu) * (z - mv) for x, z in zip(u, v)) / (len(u) - 1)

    var = (cov(v10[0], v10[0]) + cov(v10[1], v10[1]) - 2 * cov(v10[0], v10[1])) / m + (
        cov(v01[0], v01[0]) + cov(v01[1], v01[1]) - 2 * cov(v01[0], v01[1])
    ) / n
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc[0], auc[1], z, 2 * (1 - NormalDist().cdf(abs(z)))


def test_delong_hand_worked_example():
    # Positives score (.9 .6 .4) under A and (.8 .3 .7) under B; negatives (.5 .4 .1) and (.2 .6 .1).
    # A: V10 = (1, 1, 1/2), V01 = (2/3, 5/6, 1), AUC 5/6.  B: V10 = (1, 2/3, 1), V01 = (1, 2/3, 1), AUC 8/9.
    # S10 = [[1/12, -1/36], [-1/36, 1/27]], S01 = [[1/36, 0], [0, 1/27]]
    # Var(A - B) = (1/12 + 1/27 + 2/36)/3 + (1/36 + 1/27)/3 = 13/162;  z = (-1/18)/sqrt(13/162) = -1/sqrt(26).
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.4, 0.1])
    b = np.array([0.8, 0.3, 0.7, 0.2, 0.6, 0.1])
    auc_a, auc_b, z, p = metrics.delong_test(y, a, b)
    assert auc_a == pytest.approx(5 / 6) and auc_b == pytest.approx(8 / 9)
    assert z == pytest.approx(-1 / math.sqrt(26), abs=1e-12)
    assert p == pytest.approx(2 * (1 - NormalDist().cdf(1 / math.sqrt(26))), abs=1e-12)  # 0.8445


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_bruteforce_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.4).astype(int)
    a = np.round(rng.random(60) + 0.5 * y, 1)
    b = np.round(0.7 * a + 0.5 * rng.random(60), 1)
    got = metrics.delong_test(y, a, b)
    np.testing.assert_allclose(tuple(got), delong_bruteforce(y, a, b), rtol=1e-10, atol=1e-12)
    assert got.auc_a == pytest.approx(roc_auc_score(y, a))


def test_delong_degenerate_cases():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2])
    same = metrics.delong_test(y, p, p)
    assert same.z == 0 and same.p_value == 1
    assert all(math.isnan(v) for v in metrics.delong_test(np.zeros(5), p, p[::-1]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.delong_test(y, p, np.array([0.1, np.nan, 0.2, 0.3, 0.4]))


def test_choose_thresholds_f1_and_youden_against_brute_force():
    y, p = make_data(300, k=3, decimals=2, seed=6)
    for method in ("f1", "youden"):
        thr = metrics.choose_thresholds(y, p, method=method)
        for c in range(3):
            def score(t):
                m = metrics.binary_metrics(y[:, [c]], p[:, [c]], [t])
                return m["f1"][0] if method == "f1" else m["sensitivity"][0] + m["specificity"][0] - 1
            best = max(np.nan_to_num(score(t)) for t in np.unique(p[:, c]))
            assert score(thr[c]) == pytest.approx(best)
    y[:, 0] = 0
    assert np.isnan(metrics.choose_thresholds(y, p)[0])
    with pytest.raises(ValueError, match="threshold method"):
        metrics.choose_thresholds(y, p, method="accuracy")


def test_binary_metrics_against_confusion_matrix():
    y, p = make_data(200, k=4, seed=8)
    thr = np.array([0.3, 0.5, 0.7, np.nan])
    out = metrics.binary_metrics(y, p, thr)
    for c in range(3):
        tn, fp, fn, tp = confusion_matrix(y[:, c], p[:, c] >= thr[c], labels=[0, 1]).ravel()
        assert out["sensitivity"][c] == pytest.approx(tp / (tp + fn))
        assert out["specificity"][c] == pytest.approx(tn / (tn + fp))
        assert out["ppv"][c] == pytest.approx(tp / (tp + fp))
        assert out["f1"][c] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert all(np.isnan(v[3]) for v in out.values())


def test_check_finite_names_rows():
    p = np.full((5, 14), 0.5)
    p[1, 3] = np.nan
    p[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 5 rows.*b\.png \(row 1\), e\.png \(row 4\)"):
        metrics.check_finite(p, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    with pytest.raises(ValueError, match=r"row 1, row 4"):
        metrics.check_finite(p)
    metrics.check_finite(np.zeros((3, 14)))


# --------------------------------------------------------------------------- paired tests that respect patients


def clustered_pair(n_patients, per_patient, seed):
    """Two correlated models; every patient has ``per_patient`` near-duplicate images with the same labels."""
    rng = np.random.default_rng(seed)
    y_pat = rng.random(n_patients) < 0.3
    a_pat = rng.normal(size=n_patients) + 1.0 * y_pat
    b_pat = a_pat + 0.8 * rng.normal(size=n_patients) + 0.25 * y_pat
    n = n_patients * per_patient
    y = np.repeat(y_pat, per_patient).astype(np.uint8)
    a = np.repeat(a_pat, per_patient) + 0.05 * rng.normal(size=n)
    b = np.repeat(b_pat, per_patient) + 0.05 * rng.normal(size=n)
    return y, a, b, np.repeat(np.arange(n_patients), per_patient)


def test_paired_bootstrap_with_duplicated_patients_differs_from_image_level_delong():
    """4 images per patient: DeLong counts 600 independent cases, the patient bootstrap 150 patients."""
    y, a, b, patients = clustered_pair(150, 4, seed=4)
    delong = metrics.delong_test(y, a, b).p_value
    boot = float(metrics.paired_bootstrap_test(y, a, b, patients).p_value[0])
    assert delong < 0.05 < boot, (delong, boot)  # DeLong calls it significant; with patients counted once it is not
    assert boot > 5 * delong


@pytest.mark.parametrize("seed", [0, 1, 3, 5])
def test_paired_bootstrap_agrees_with_delong_when_each_patient_has_one_image(seed):
    y, a, b, patients = clustered_pair(600, 1, seed=seed)
    delong = metrics.delong_test(y, a, b)
    boot = metrics.paired_bootstrap_test(y, a, b, patients)
    assert float(boot.auc_a[0]) == pytest.approx(delong.auc_a) and float(boot.auc_b[0]) == pytest.approx(delong.auc_b)
    assert abs(float(boot.p_value[0]) - delong.p_value) < 0.02, (boot.p_value, delong.p_value)


def test_paired_bootstrap_is_seeded_and_reproducible():
    y, a, b, patients = clustered_pair(100, 3, seed=2)
    one = metrics.paired_bootstrap_test(y, a, b, patients, seed=7)
    two = metrics.paired_bootstrap_test(y, a, b, patients, seed=7)
    assert np.array_equal(one.p_value, two.p_value) and "patients" in one.method
    other = metrics.paired_bootstrap_test(y, a, b, patients, seed=8)
    assert not np.array_equal(one.p_value, other.p_value)


def test_paired_auroc_test_picks_delong_only_for_one_image_per_patient():
    y, a, b, patients = clustered_pair(200, 1, seed=1)
    chosen = metrics.paired_auroc_test(y, a, b, patients)
    assert chosen.method.startswith("DeLong") and chosen.p_value[0] == pytest.approx(metrics.delong_test(y, a, b).p_value)
    y, a, b, patients = clustered_pair(100, 3, seed=1)
    assert "bootstrap over patients" in metrics.paired_auroc_test(y, a, b, patients).method


def test_paired_bootstrap_identical_models_and_undefined_classes():
    y, a, _, patients = clustered_pair(80, 2, seed=3)
    same = metrics.paired_bootstrap_test(y, a, a, patients)
    assert same.z[0] == 0 and same.p_value[0] == 1.0
    flat = metrics.paired_bootstrap_test(np.zeros_like(y), a, a, patients)
    assert np.isnan(flat.p_value[0])


# --------------------------------------------------------------------------- missing labels (NaN)


def with_missing(n, k=6, seed=11, frac=0.3, decimals=2):
    """Float labels with NaN (missing) in about ``frac`` of the cells; column 0 is complete, the last all missing."""
    y, p = make_data(n, k=k, seed=seed, prevalence=0.3, decimals=decimals)
    y = y.astype(np.float64)
    y[np.random.default_rng(seed + 1).random(y.shape) < frac] = np.nan
    y[:, 0] = make_data(n, k=k, seed=seed, prevalence=0.3)[0][:, 0]
    y[:, -1] = np.nan
    return y, p


def test_auroc_with_missing_labels_is_sklearn_on_the_known_rows():
    y, p = with_missing(300)
    got = metrics.auroc(y, p)
    for c in range(y.shape[1] - 1):
        rows = ~np.isnan(y[:, c])
        assert got[c] == pytest.approx(roc_auc_score(y[rows, c], p[rows, c]), abs=1e-12)
    assert np.isnan(got[-1])  # no known row
    rows = ~np.isnan(y[:, 2])
    assert metrics.auroc(y[:, 2], p[:, 2]) == pytest.approx(roc_auc_score(y[rows, 2], p[rows, 2]), abs=1e-12)
    assert metrics.defined_classes(y).tolist() == [True] * 5 + [False]


def test_a_class_without_positives_among_its_known_rows_is_nan_not_half():
    y, p = with_missing(200)
    y[y[:, 1] == 1, 1] = np.nan  # the positives of class 1 become missing: its known rows are all negative
    y[y[:, 2] == 0, 2] = np.nan  # class 2: known rows all positive
    out = metrics.auroc(y, p)
    assert np.isnan(out[1]) and np.isnan(out[2]) and np.isfinite(out[[0, 3, 4]]).all() and np.isnan(out[5])
    assert metrics.defined_classes(y).tolist() == [True, False, False, True, True, False]
    ap = metrics.auprc(y, p)
    assert np.isnan(ap[1]) and np.isnan(ap[5]) and ap[2] == pytest.approx(1.0)  # AP: NaN without positives only
    ci = metrics.bootstrap_auroc_ci(y, p, n_resamples=20)
    assert np.isnan(ci.low[[1, 2, 5]]).all() and (ci.n_valid[[1, 2, 5]] == 0).all()


def test_auprc_weighted_auroc_thresholds_and_binary_metrics_use_the_known_rows():
    y, p = with_missing(300, k=4)
    w = np.random.default_rng(4).integers(0, 4, size=(3, 300))
    weighted = metrics.weighted_auroc(y, p, w)
    thr = {m: metrics.choose_thresholds(y, p, method=m) for m in ("f1", "youden")}
    binary = metrics.binary_metrics(y, p, thr["f1"])
    ap = metrics.auprc(y, p)
    for c in range(3):
        rows = ~np.isnan(y[:, c])
        yc, pc = y[rows, c], p[rows, c]
        assert ap[c] == pytest.approx(average_precision_score(yc, pc), abs=1e-12)
        np.testing.assert_allclose(weighted[:, c], [roc_auc_score(yc, pc, sample_weight=r[rows]) for r in w], atol=1e-12)
        for m in ("f1", "youden"):
            assert thr[m][c] == metrics.choose_thresholds(yc, pc, method=m)
        tn, fp, fn, tp = confusion_matrix(yc, pc >= thr["f1"][c], labels=[0, 1]).ravel()
        assert binary["sensitivity"][c] == pytest.approx(tp / (tp + fn))
        assert binary["specificity"][c] == pytest.approx(tn / (tn + fp))
        assert binary["ppv"][c] == pytest.approx(tp / (tp + fp))
    assert np.isnan(ap[3]) and np.isnan(thr["f1"][3]) and np.isnan(thr["youden"][3]) and np.isnan(weighted[:, 3]).all()
    assert all(np.isnan(v[3]) for v in binary.values())


def test_bootstrap_ci_with_missing_labels():
    y, p = with_missing(900, seed=3)
    patients = np.arange(900) // 3
    ci = metrics.bootstrap_auroc_ci(y, p, groups=patients, n_resamples=200, seed=1)
    point = metrics.auroc(y, p)
    scoreable = [0, 1, 2, 3, 4]
    assert np.isfinite(ci.low[scoreable]).all() and np.isfinite(ci.high[scoreable]).all()
    assert np.all(ci.low[scoreable] < point[scoreable]) and np.all(point[scoreable] < ci.high[scoreable])
    assert np.isnan(ci.low[5]) and np.isnan(ci.high[5]) and ci.n_valid[5] == 0
    assert np.isfinite(ci.samples[:, scoreable]).all()
    assert ci.mean_low < np.nanmean(point) < ci.mean_high  # the mean over the 5 scoreable classes
    # a resample's AUROC of a class is the weighted AUROC of its known rows under the patient multiplicities
    rng = np.random.default_rng(1)
    counts = rng.multinomial(300, np.full(300, 1 / 300), size=1)[0]
    np.testing.assert_allclose(ci.samples[0], metrics.weighted_auroc(y, p, counts[patients])[0], atol=1e-12)


def test_delong_and_paired_tests_with_missing_labels():
    y, a, b, patients = clustered_pair(300, 1, seed=0)
    y = y.astype(np.float64)
    y[np.random.default_rng(0).random(len(y)) < 0.25] = np.nan
    rows = ~np.isnan(y)
    got = metrics.delong_test(y, a, b)
    np.testing.assert_allclose(tuple(got), tuple(metrics.delong_test(y[rows].astype(int), a[rows], b[rows])), rtol=1e-12)
    assert all(math.isnan(v) for v in metrics.delong_test(np.full(len(y), np.nan), a, b))
    y2 = np.column_stack([y, np.full(len(y), np.nan)])
    a2, b2 = np.column_stack([a, a]), np.column_stack([b, b])
    chosen = metrics.paired_auroc_test(y2, a2, b2, patients)
    assert chosen.method.startswith("DeLong") and chosen.p_value[0] == pytest.approx(got.p_value)
    assert np.isnan(chosen.p_value[1]) and np.isnan(chosen.auc_a[1])
    boot = metrics.paired_bootstrap_test(y2, a2, b2, np.arange(len(y)) // 2, n_resamples=200)
    assert boot.auc_a[0] == pytest.approx(roc_auc_score(y[rows], a[rows]))
    assert 0 <= boot.p_value[0] <= 1 and np.isnan(boot.p_value[1])
    assert "bootstrap" in metrics.paired_auroc_test(y2, a2, b2, np.arange(len(y)) // 2, n_resamples=50).method


def test_labels_other_than_0_1_or_nan_are_still_refused():
    with pytest.raises(ValueError, match="row 1, column 0"):
        metrics.auroc(np.array([[np.nan], [0.5], [1.0]]), np.array([[0.1], [0.2], [0.3]]))
