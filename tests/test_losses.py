"""The training loss and its weightings, checked against hand computations of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chexnet.losses import WeightedBCE, build_criterion, class_weights, loss_from_probs

# training labels of 3 classes over 8 images: P = 2, 3, 0 positives
TRAIN = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 0.3, -2.0]])
TARGET = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_balanced_weighting_is_the_papers_formula_by_hand():
    """CheXNet's w+ = |N| / (|P| + |N|), w- = |P| / (|P| + |N|) per class; L = -w+ y log p - w- (1 - y) log(1 - p)."""
    w_pos, w_neg = class_weights(TRAIN, "balanced")
    assert np.allclose(w_pos, [6 / 8, 5 / 8, 8 / 8]) and np.allclose(w_neg, [2 / 8, 3 / 8, 0 / 8])
    expected = 0.0
    for b in range(2):
        for k in range(3):
            p, y = _sigmoid(float(LOGITS[b, k])), float(TARGET[b, k])
            expected += -(w_pos[k] * y * math.log(p) + w_neg[k] * (1 - y) * math.log(1 - p))
    expected /= 6  # mean over the 2 x 3 terms
    got = build_criterion(TRAIN, "balanced")(LOGITS, TARGET)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_unweighted_and_pos_ratio_are_torchs_losses():
    assert float(build_criterion(TRAIN, "none")(LOGITS, TARGET)) == pytest.approx(
        float(torch.nn.BCEWithLogitsLoss()(LOGITS, TARGET)), rel=1e-7)
    ratio = torch.tensor([6 / 2, 5 / 3, 1.0])  # N/P; a class without positives keeps 1
    assert float(build_criterion(TRAIN, "pos_ratio")(LOGITS, TARGET)) == pytest.approx(
        float(torch.nn.BCEWithLogitsLoss(pos_weight=ratio)(LOGITS, TARGET)), rel=1e-6)


@pytest.mark.parametrize("weighting", ["none", "balanced", "pos_ratio"])
def test_validation_loss_from_probabilities_is_the_trained_loss(weighting):
    crit = build_criterion(TRAIN, weighting)
    probs = torch.sigmoid(LOGITS).numpy()
    val = loss_from_probs(TARGET.numpy(), probs, crit.w_pos.numpy(), crit.w_neg.numpy())
    assert val == pytest.approx(float(crit(LOGITS, TARGET)), rel=1e-5)


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="loss_weighting"):
        class_weights(TRAIN, "chexnet")


# --------------------------------------------------------------------------- missing labels (NaN)

NAN = float("nan")
# 3 classes over 6 images, NaN = missing: known P/N = 2/2, 1/2, 0/3 (class 2 has no positive)
TRAIN_NAN = np.array([[1, 1, 0], [1, NAN, NAN], [0, 0, 0], [NAN, 0, 0], [0, NAN, NAN], [NAN, NAN, NAN]])
LOGITS3 = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 0.3, -2.0], [0.1, 1.2, -0.7]])
TARGET_NAN = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, 1.0], [0.0, 0.0, NAN]])


def _old_criterion(crit, logits, target):
    """The forward of WeightedBCE before missing labels existed, copied verbatim."""
    if crit.unweighted:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    weight = torch.addcmul(crit.w_neg, target, crit.w_pos - crit.w_neg)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)


def _old_class_weights(labels, weighting):
    y = np.asarray(labels, dtype=np.float64)
    k = y.shape[1]
    if weighting == "none":
        return np.ones(k), np.ones(k)
    pos = y.sum(axis=0)
    neg = len(y) - pos
    if weighting == "balanced":
        total = np.maximum(pos + neg, 1)
        return neg / total, pos / total
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), np.ones(k)


def _old_loss_from_probs(y, p, w_pos, w_neg):
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(-(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log1p(-p)).mean())


def test_class_weights_count_known_values_only():
    w_pos, w_neg = class_weights(TRAIN_NAN, "balanced")
    np.testing.assert_allclose(w_pos, [2 / 4, 2 / 3, 3 / 3])
    np.testing.assert_allclose(w_neg, [2 / 4, 1 / 3, 0 / 3])
    w_pos, w_neg = class_weights(TRAIN_NAN, "pos_ratio")
    np.testing.assert_allclose(w_pos, [2 / 2, 2 / 1, 1.0])
    np.testing.assert_array_equal(w_neg, 1.0)


@pytest.mark.parametrize("weighting", ["none", "balanced"])
def test_masked_loss_is_the_hand_computation(weighting):
    w_pos, w_neg = class_weights(TRAIN_NAN, weighting)
    total, known = 0.0, 0
    for b in range(3):
        for k in range(3):
            y = float(TARGET_NAN[b, k])
            if math.isnan(y):
                continue
            p = _sigmoid(float(LOGITS3[b, k]))
            total += -(w_pos[k] * y * math.log(p) + w_neg[k] * (1 - y) * math.log(1 - p))
            known += 1
    assert known == 6
    expected = total / known  # sum over the known elements / their number
    crit = build_criterion(TRAIN_NAN, weighting)
    logits = LOGITS3.clone().requires_grad_(True)
    got = crit(logits, TARGET_NAN)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[torch.isnan(TARGET_NAN)] == 0).all()  # a missing element has no gradient
    val = loss_from_probs(TARGET_NAN.numpy(), torch.sigmoid(LOGITS3).numpy(), crit.w_pos.numpy(), crit.w_neg.numpy())
    assert val == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weighting", ["none", "balanced", "pos_ratio"])
def test_a_label_missing_in_every_row_contributes_nothing(weighting):
    crit = build_criterion(TRAIN, weighting)
    target = TARGET.clone()
    target[:, 2] = NAN
    logits = LOGITS.clone().requires_grad_(True)
    loss = crit(logits, target)
    loss.backward()
    # the loss of the two other classes alone, with their weights
    two = WeightedBCE(crit.w_pos[:2].numpy(), crit.w_neg[:2].numpy())
    assert loss.item() == pytest.approx(two(LOGITS[:, :2], TARGET[:, :2]).item(), rel=1e-6)
    assert torch.equal(logits.grad[:, 2], torch.zeros(2))  # exactly zero, not NaN
    assert torch.isfinite(logits.grad).all()
    all_missing = crit(logits, torch.full_like(TARGET, NAN))
    assert all_missing.item() == 0.0  # a batch without any known element: loss 0, no gradient
    logits.grad = None
    all_missing.backward()
    assert torch.equal(logits.grad, torch.zeros_like(LOGITS))


@pytest.mark.parametrize("weighting", ["none", "balanced", "pos_ratio"])
def test_without_nan_every_number_is_the_old_one(weighting):
    rng = np.random.default_rng(0)
    train = (rng.random((50, 4)) < 0.3).astype(np.float32)
    w_pos, w_neg = class_weights(train, weighting)
    old_pos, old_neg = _old_class_weights(train, weighting)
    assert np.array_equal(w_pos, old_pos) and np.array_equal(w_neg, old_neg)
    crit = build_criterion(train, weighting)
    logits = torch.tensor(rng.normal(size=(16, 4)), dtype=torch.float32)
    target = torch.tensor((rng.random((16, 4)) < 0.3), dtype=torch.float32)
    new_in, old_in = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    new, old = crit(new_in, target), _old_criterion(crit, old_in, target)
    assert torch.equal(new, old)  # bit for bit
    new.backward()
    old.backward()
    assert torch.equal(new_in.grad, old_in.grad)
    probs = torch.sigmoid(logits).numpy()
    assert loss_from_probs(target.numpy(), probs, w_pos, w_neg) == _old_loss_from_probs(target.numpy(), probs, w_pos, w_neg)


def test_a_label_without_any_known_value_is_refused_by_name():
    train = TRAIN_NAN.copy()
    train[:, 1] = NAN
    with pytest.raises(ValueError, match=r"^label 1 has no known value in the training split$"):
        build_criterion(train, "none")
    with pytest.raises(ValueError, match=r"^label 'Fracture' has no known value in the training split$"):
        build_criterion(train, "balanced", names=["Mass", "Fracture", "Hernia"])
    train[:, 2] = NAN
    with pytest.raises(ValueError, match=r"labels 'Fracture', 'Hernia' have no known value"):
        build_criterion(train, "pos_ratio", names=["Mass", "Fracture", "Hernia"])
    with pytest.raises(ValueError, match="no known label value"):
        loss_from_probs(np.full((2, 3), NAN), np.full((2, 3), 0.5))
