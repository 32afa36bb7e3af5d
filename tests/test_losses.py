"""The training loss and its weightings, checked against hand computations of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chexnet.losses import build_criterion, class_weights, loss_from_probs

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
