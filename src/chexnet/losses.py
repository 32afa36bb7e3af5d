"""The training loss: binary cross-entropy over the 14 outputs, unweighted or with per-class weights.

``loss_weighting`` (a config field) names what is done:

* ``none`` -- the 14-class CheXNet model (Rajpurkar et al. 2017): unweighted binary cross-entropies. The paper
  sums them over the 14 classes; here they are averaged (over classes and images). For Adam the two differ
  only through epsilon, and the plateau rule compares losses relatively, so the choice does not change training.
* ``balanced`` -- the weighting of CheXNet's *binary pneumonia* model, applied to each class: positives weighted
  w+ = |N| / (|P| + |N|), negatives w- = |P| / (|P| + |N|), with |P| and |N| the class's positive and negative
  training images. ``L = -w+ y log p - w- (1 - y) log (1 - p)``.
* ``pos_ratio`` -- torch's ``BCEWithLogitsLoss(pos_weight=|N| / |P|)``: positives weighted by the ratio of
  negatives to positives, negatives by 1 (a common reimplementation choice; not what the paper did).

The same weights give the validation loss (:func:`loss_from_probs`), so the plateau schedule and model
selection watch the loss that is trained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chexnet.choices import LOSS_WEIGHTINGS


def class_weights(labels: np.ndarray, weighting: str) -> tuple[np.ndarray, np.ndarray]:
    """(w_pos, w_neg), float64 arrays (k,), from the training labels (n, k) of 0/1.

    A class without positives keeps weight 1 on its negatives under ``pos_ratio``; under ``balanced`` its
    w- = 0 (nothing to balance against), exactly as the formula gives.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {tuple(LOSS_WEIGHTINGS)}, got {weighting!r}")
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


class WeightedBCE(nn.Module):
    """Mean over images and classes of ``-(w+ y log sigmoid(z) + w- (1 - y) log(1 - sigmoid(z)))``, from logits."""

    def __init__(self, w_pos: np.ndarray, w_neg: np.ndarray):
        super().__init__()
        self.register_buffer("w_pos", torch.as_tensor(np.asarray(w_pos), dtype=torch.float32))
        self.register_buffer("w_neg", torch.as_tensor(np.asarray(w_neg), dtype=torch.float32))
        self.unweighted = bool((self.w_pos == 1).all() and (self.w_neg == 1).all())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.unweighted:
            return F.binary_cross_entropy_with_logits(logits, target)
        weight = torch.addcmul(self.w_neg, target, self.w_pos - self.w_neg)  # w- + y (w+ - w-)
        return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


def build_criterion(train_labels: np.ndarray, weighting: str) -> WeightedBCE:
    return WeightedBCE(*class_weights(train_labels, weighting))


def loss_from_probs(y: np.ndarray, p: np.ndarray, w_pos=None, w_neg=None) -> float:
    """The same loss from predicted probabilities (validation), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    w_pos = np.ones(y.shape[-1]) if w_pos is None else np.asarray(w_pos, dtype=np.float64)
    w_neg = np.ones(y.shape[-1]) if w_neg is None else np.asarray(w_neg, dtype=np.float64)
    return float(-(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log1p(-p)).mean())
