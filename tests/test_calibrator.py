"""Temperature and Platt scaling recover what generated the data, never change AUROC, and belong to one
checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chexnet import calibrator as K


def _overconfident(n: int, temperature: float, seed: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z + shift)))).astype(float)
    return 1 / (1 + np.exp(-temperature * z)), y  # the model's logit is T times the true one


def test_temperature_scaling_recovers_the_generating_temperature_and_keeps_auroc():
    p1, y1 = _overconfident(100_000, 2.5, 0)
    p2, y2 = _overconfident(100_000, 0.5, 1)  # underconfident
    p, y = np.column_stack([p1, p2]), np.column_stack([y1, y2])
    cal = K.fit(p, y, ["A", "B"])
    assert cal.temperature[0] == pytest.approx(2.5, rel=0.02) and cal.temperature[1] == pytest.approx(0.5, rel=0.02)
    assert all(after <= before for before, after in zip(cal.val_nll_before, cal.val_nll_after))
    q = cal.apply(p)
    for c in range(2):
        assert roc_auc_score(y[:, c], q[:, c]) == roc_auc_score(y[:, c], p[:, c])
    assert cal.shared == [] and cal.at_bound == [] and cal.intercept == [0.0, 0.0]


def test_a_label_with_too_few_positives_takes_the_shared_temperature():
    p1, y1 = _overconfident(5000, 2.0, 2)
    y2 = np.zeros(5000)
    y2[:3] = 1  # 3 positives < MIN_POSITIVES
    y3 = np.full(5000, np.nan)  # not in this data set
    cal = K.fit(np.column_stack([p1, p1, p1]), np.column_stack([y1, y2, y3]), ["A", "B", "C"])
    assert cal.shared == ["B", "C"] and cal.temperature[1] == cal.shared_temperature == cal.temperature[2]
    assert cal.positives == [int(y1.sum()), 3, 0] and cal.n == [5000, 5000, 0]


def test_platt_corrects_a_prevalence_shift_that_a_temperature_cannot():
    p, y = _overconfident(100_000, 1.0, 3, shift=-1.5)  # right ranking and scale, too many positives predicted
    p, y = p[:, None], y[:, None]
    platt, temp = K.fit(p, y, ["A"], method="platt"), K.fit(p, y, ["A"])
    assert platt.slope[0] == pytest.approx(1.0, abs=0.03) and platt.intercept[0] == pytest.approx(-1.5, abs=0.05)
    assert platt.val_nll_after[0] < temp.val_nll_after[0]


def test_a_degenerate_fit_is_flagged_at_its_bound():
    rng = np.random.default_rng(4)
    p = rng.random((400, 1))
    y = (rng.random((400, 1)) < 0.5).astype(float)  # the scores say nothing: the best temperature is huge
    with pytest.warns(UserWarning, match="at a bound"):
        cal = K.fit(p, y, ["A"])
    assert cal.at_bound == ["A"]


def test_the_saved_calibrator_belongs_to_its_checkpoint(tmp_path):
    p, y = _overconfident(2000, 2.0, 5)
    cal = K.fit(p[:, None], y[:, None], ["A"])
    cal.checkpoint, cal.epoch, cal.global_step = "best.pt", 3, 30
    K.save(tmp_path, cal)
    loaded = SimpleNamespace(epoch=3, global_step=30, cfg=SimpleNamespace(labels=("A",)))
    back, note = K.saved_calibrator(tmp_path, loaded)
    assert back == cal and "temperature scaling" in note
    other = SimpleNamespace(epoch=4, global_step=40, cfg=SimpleNamespace(labels=("A",)))
    none, why = K.saved_calibrator(tmp_path, other)
    assert none is None and "belongs to another checkpoint (best.pt, epoch 3, step 30)" in why
    bad = json.loads((tmp_path / K.CALIBRATOR).read_text())
    bad["slope"] = [-1.0]
    (tmp_path / K.CALIBRATOR).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="slope must be finite and > 0"):
        K.saved_calibrator(tmp_path, loaded)
