"""A calibrator fitted on the validation split, applied wherever a run's probabilities leave chexnet.

Every method is an affine map of each label's logit: ``p' = sigmoid(slope * logit(p) + intercept)``, with
``logit(p) = log(p / (1 - p))`` of the model's probability clipped to [1e-7, 1 - 1e-7] (so test-time
augmentation, which averages probabilities, is calibrated the same way everywhere):

``temperature``  temperature scaling (Guo et al. 2017), one temperature ``T`` per label: ``slope = 1 / T``,
                 ``intercept = 0``. ``T`` minimises the label's validation NLL over ``log T`` in [log 0.05,
                 log 20] (float64, bounded Brent: the NLL is convex in 1/T). A label with fewer than
                 ``min_positives`` positives or negatives among its known rows gets the temperature fitted on
                 all labels' known rows together (``shared``); a temperature within 1% of a bound is flagged
                 (``at_bound``) and warned about.
``platt``        Platt scaling per label: slope and intercept by maximum likelihood (the intercept corrects a
                 prevalence shift, which a temperature cannot); the same fallback to the shared temperature.

Being increasing in ``p`` for every positive slope, it never changes a label's AUROC; thresholds move with it
(a threshold ``t`` on raw probabilities is ``apply(t)`` on calibrated ones). Isotonic regression is not
offered: it creates ties that change AUROC and has no clean ONNX form.

On disk (:func:`save`, ``RUN/calibrator.json``): ``{"method", "checkpoint", "epoch", "global_step",
"fitted_on": "val", "labels": [...], "slope": [...], "intercept": [...], "temperature": [... or null],
"shared": [label names], "at_bound": [label names], "shared_temperature", "val_nll_before", "val_nll_after",
"n", "positives", "thresholds": {"method", "raw", "calibrated"}}`` (lists in the run's label order;
``thresholds``: the run's validation thresholds, per label, before and after); it belongs to the checkpoint whose epoch and step it
records and is refused for another (:func:`saved_calibrator`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from chexnet.calibration import EPS, _newton_logistic, logit

CALIBRATOR = "calibrator.json"
METHODS = ("temperature", "platt")
BOUNDS = (0.05, 20.0)
MIN_POSITIVES = 10


@dataclass
class Calibrator:
    method: str
    labels: list[str]
    slope: list[float]
    intercept: list[float]
    temperature: list[float | None] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    at_bound: list[str] = field(default_factory=list)
    shared_temperature: float | None = None
    val_nll_before: list[float | None] = field(default_factory=list)
    val_nll_after: list[float | None] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    positives: list[int] = field(default_factory=list)
    checkpoint: str = ""
    epoch: int | None = None
    global_step: int | None = None
    fitted_on: str = "val"
    thresholds: dict = field(default_factory=dict)  # {"method", "raw": {label: t}, "calibrated": {label: t}}

    def unmap_thresholds(self, values) -> np.ndarray:
        """Thresholds on calibrated probabilities back on the raw scale (the inverse of :meth:`map_thresholds`)."""
        t = np.asarray(values, np.float64)
        z = (logit(np.where(np.isfinite(t), t, 0.5)) - np.asarray(self.intercept)) / np.asarray(self.slope)
        return _ends(t, np.where(np.isfinite(t), 1.0 / (1.0 + np.exp(-z)), np.nan))

    def map_thresholds(self, values) -> np.ndarray:
        """Raw thresholds (one per label, NaN kept) as thresholds on calibrated probabilities: the same decisions."""
        raw = np.asarray(values, np.float64)
        return _ends(raw, np.where(np.isfinite(raw), self.apply(np.where(np.isfinite(raw), raw, 0.5)[None, :])[0],
                                   np.nan))

    def apply(self, p) -> np.ndarray:
        """Calibrated probabilities of ``p`` ((N, labels) in :attr:`labels` order), float64."""
        z = logit(p)
        return 1.0 / (1.0 + np.exp(-(np.asarray(self.slope) * z + np.asarray(self.intercept))))

    def describe(self) -> str:
        return f"{self.method} scaling fitted on the validation split of {self.checkpoint or 'the checkpoint'}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibrator:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cal = cls(**known)
        if cal.method not in METHODS or len(cal.slope) != len(cal.labels) or len(cal.intercept) != len(cal.labels):
            raise ValueError(f"calibrator: method {cal.method!r} with {len(cal.slope)} slopes and "
                             f"{len(cal.intercept)} intercepts for {len(cal.labels)} labels")
        if not all(math.isfinite(s) and s > 0 for s in cal.slope):
            raise ValueError("calibrator: every slope must be finite and > 0 (an increasing map)")
        return cal


def _ends(t: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """A threshold of 1 (nothing positive) or 0 (everything) stays so on either scale."""
    return np.where(t >= 1.0, 1.0, np.where(t <= 0.0, 0.0, mapped))


def _nll(z: np.ndarray, y: np.ndarray, slope: float, intercept: float = 0.0) -> float:
    eta = slope * z + intercept
    return float(np.mean(np.logaddexp(0.0, eta) - y * eta))  # -log sigmoid(eta) for y=1, -log(1-...) for y=0


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``sigmoid(z / T)`` for labels ``y`` (known rows), in :data:`BOUNDS`."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: _nll(z, y, math.exp(-log_t)), bounds=tuple(map(math.log, BOUNDS)),
                          method="bounded", options={"xatol": 1e-8})
    return float(math.exp(res.x))


def _at_bound(t: float) -> bool:
    return t < BOUNDS[0] * 1.01 or t > BOUNDS[1] / 1.01


def fit(p, y, labels, method: str = "temperature", min_positives: int = MIN_POSITIVES) -> Calibrator:
    """Fit a :class:`Calibrator` on validation probabilities ``p`` and labels ``y`` ((N, labels); NaN missing)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}; got {method!r}")
    z_all, y = logit(p), np.asarray(y, np.float64)
    labels = list(labels)
    known = np.isfinite(y)
    if not known.any():
        raise ValueError("no known validation label: nothing to fit a calibrator on")
    shared_t = fit_temperature(z_all[known], y[known])
    cal = Calibrator(method, labels, [], [], shared_temperature=shared_t)
    for c, name in enumerate(labels):
        k = known[:, c]
        z, t = z_all[k, c], y[k, c]
        pos, n = int(t.sum()), int(k.sum())
        cal.n.append(n)
        cal.positives.append(pos)
        cal.val_nll_before.append(_nll(z, t, 1.0) if n else None)
        if min(pos, n - pos) < min_positives:
            slope, intercept, temp = 1.0 / shared_t, 0.0, shared_t
            cal.shared.append(name)
        elif method == "temperature":
            temp = fit_temperature(z, t)
            slope, intercept = 1.0 / temp, 0.0
        else:
            intercept, slope = _newton_logistic(z, t, np.ones_like(z), np.zeros_like(z), fit_slope=True)
            temp = None
            if not slope > 0:  # a label the model ranks backwards on validation: keep an increasing map
                temp = fit_temperature(z, t)
                slope, intercept = 1.0 / temp, 0.0
        if temp is not None and _at_bound(temp):
            cal.at_bound.append(name)
        cal.slope.append(float(slope))
        cal.intercept.append(float(intercept))
        cal.temperature.append(temp)
        cal.val_nll_after.append(_nll(z, t, slope, intercept) if n else None)
    if cal.shared and _at_bound(shared_t):
        cal.at_bound.append("(shared)")
    if cal.at_bound:
        warnings.warn(f"calibration: temperature at a bound {BOUNDS} for {', '.join(cal.at_bound)}: the "
                      f"validation split may be too small or the model degenerate there", stacklevel=2)
    return cal


def save(run: str | Path, cal: Calibrator) -> Path:
    from chexnet.fileio import atomic_write

    path = Path(run) / CALIBRATOR
    atomic_write(path, json.dumps(cal.to_dict(), indent=2) + "\n")
    return path


def saved_calibrator(run: str | Path, loaded) -> tuple[Calibrator | None, str]:
    """(calibrator, note): RUN/calibrator.json when it belongs to ``loaded``'s checkpoint (same epoch and step,
    same labels); (None, why) otherwise ('' when the run has none)."""
    path = Path(run) / CALIBRATOR
    if not path.is_file():
        return None, ""
    try:
        cal = Calibrator.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: not a calibrator ({exc}); run chexnet calibrate again") from None
    if (cal.epoch, cal.global_step) != (loaded.epoch, loaded.global_step):
        return None, (f"{path.name} belongs to another checkpoint ({cal.checkpoint}, epoch {cal.epoch}, step "
                      f"{cal.global_step}); not applied: run chexnet calibrate for this one")
    if list(cal.labels) != list(loaded.cfg.labels):
        return None, f"{path.name} has labels {cal.labels}, the run {list(loaded.cfg.labels)}; not applied"
    return cal, cal.describe()


__all__ = ["BOUNDS", "CALIBRATOR", "EPS", "METHODS", "Calibrator", "fit", "fit_temperature", "save",
           "saved_calibrator"]
