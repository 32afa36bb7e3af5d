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

Missing labels. A label value is 1, 0 or missing (the dataset lacks that label, or its value is uncertain);
missing is NaN in the float label matrix (n, k). The masking rule:

* |P| and |N| above count *known* values only (per class: the 1s and the 0s; NaN is neither).
* A missing element (image i, class c) gets weight 0: it adds nothing to the loss and nothing to any gradient
  (its NaN target is replaced by 0 before the cross-entropy and then multiplied by the 0 weight).
* The loss is ``sum over known elements of w * BCE / number of known elements``, the elements of all classes
  and images pooled (not a mean of per-class means). Without NaN that is the mean over all n x k elements,
  today's ``reduction="mean"``; that case is computed by the very same ``mean`` as before, so its value is
  bit for bit unchanged. A batch with no known element has loss 0 (and zero gradient).
* A class with no known value in the training labels is an error at :func:`build_criterion`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chexnet.choices import LOSS_WEIGHTINGS


def class_weights(labels: np.ndarray, weighting: str) -> tuple[np.ndarray, np.ndarray]:
    """(w_pos, w_neg), float64 arrays (k,), from the training labels (n, k) of 0/1, NaN where missing.

    |P| and |N| are the class's known positives and known negatives (NaN is counted as neither).
    A class without positives keeps weight 1 on its negatives under ``pos_ratio``; under ``balanced`` its
    w- = 0 (nothing to balance against), exactly as the formula gives.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {tuple(LOSS_WEIGHTINGS)}, got {weighting!r}")
    y = np.asarray(labels, dtype=np.float64)
    k = y.shape[1]
    if weighting == "none":
        return np.ones(k), np.ones(k)
    known = ~np.isnan(y)
    if known.all():
        pos = y.sum(axis=0)
        neg = len(y) - pos
    else:
        pos = np.where(known, y, 0.0).sum(axis=0)
        neg = known.sum(axis=0) - pos
    if weighting == "balanced":
        total = np.maximum(pos + neg, 1)
        return neg / total, pos / total
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), np.ones(k)


class WeightedBCE(nn.Module):
    """``-(w+ y log sigmoid(z) + w- (1 - y) log(1 - sigmoid(z)))`` from logits, averaged over the known elements.

    A NaN target is missing: weight 0, left out of the mean (see the module docstring for the exact rule).
    No host-device synchronisation: whether a batch has missing targets is decided on the device.
    """

    def __init__(self, w_pos: np.ndarray, w_neg: np.ndarray):
        super().__init__()
        self.register_buffer("w_pos", torch.as_tensor(np.asarray(w_pos), dtype=torch.float32))
        self.register_buffer("w_neg", torch.as_tensor(np.asarray(w_neg), dtype=torch.float32))
        self.unweighted = bool((self.w_pos == 1).all() and (self.w_neg == 1).all())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        target = torch.where(known, target, torch.zeros((), dtype=target.dtype, device=target.device))
        if self.unweighted:
            weight = known.to(target.dtype)
        else:
            weight = torch.addcmul(self.w_neg, target, self.w_pos - self.w_neg) * known  # (w- + y (w+ - w-)) * known
        # reduction "none" then mean() is what reduction="mean" does, and a weight of 1 multiplies exactly
        elements = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
        n_known = known.sum()
        masked_mean = elements.sum() / n_known.clamp(min=1)
        return torch.where(n_known == known.numel(), elements.mean(), masked_mean)


def build_criterion(train_labels: np.ndarray, weighting: str, names=None) -> WeightedBCE:
    """The training criterion, weighted from ``train_labels`` (n, k) of 0/1 with NaN where missing.

    A class with no known value in ``train_labels`` is a ``ValueError`` naming it (by ``names[c]`` when the
    k label names are given, else by its index c).
    """
    y = np.asarray(train_labels, dtype=np.float64)
    if names is not None and len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} label names for {y.shape[1]} label columns")
    unknown = np.flatnonzero(np.isnan(y).all(axis=0))  # also every class of an empty label matrix
    if unknown.size:
        listed = ", ".join(repr(str(names[c])) if names is not None else str(int(c)) for c in unknown)
        raise ValueError(f"label{'s' if unknown.size > 1 else ''} {listed} "
                         f"{'have' if unknown.size > 1 else 'has'} no known value in the training split")
    return WeightedBCE(*class_weights(y, weighting))


def loss_from_probs(y: np.ndarray, p: np.ndarray, w_pos=None, w_neg=None) -> float:
    """The same loss from predicted probabilities (validation), probabilities clipped to [1e-7, 1 - 1e-7].

    NaN labels are missing: the loss is the sum over known elements / their number (the mean over all
    elements when nothing is missing, computed as before). Labels with no known value are a ``ValueError``.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    w_pos = np.ones(y.shape[-1]) if w_pos is None else np.asarray(w_pos, dtype=np.float64)
    w_neg = np.ones(y.shape[-1]) if w_neg is None else np.asarray(w_neg, dtype=np.float64)
    known = ~np.isnan(y)
    if known.all():
        return float(-(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log1p(-p)).mean())
    if not known.any():
        raise ValueError("no known label value: the validation loss is undefined")
    y = np.where(known, y, 0.0)
    terms = -(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log1p(-p))
    return float(terms[known].sum() / known.sum())
