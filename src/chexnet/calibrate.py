"""``chexnet calibrate RUN``: fit a calibrator (:mod:`chexnet.calibrator`) on the run's validation split.

The checkpoint (``best`` or ``last``) predicts its own cache's val split (no test-time augmentation); the
calibrator is fitted on those probabilities and saved as ``RUN/calibrator.json``, tied to the checkpoint's epoch
and step, with the run's validation thresholds both raw and mapped through it (a threshold ``t`` on raw
probabilities is ``apply(t)`` on calibrated ones: the same decisions). run.json records it (``calibrator``).
``predict``, ``evaluate``, ``export`` and ``serve`` then apply it (``--raw`` turns it off there).

Printed per label: the known validation rows, positives, the temperature (or Platt's slope and intercept),
and the validation NLL and ECE before and after; these are in-sample (fitted on the same split), so
``chexnet evaluate`` is where calibration is judged, on the test split.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from chexnet import calibration, calibrator, dist
from chexnet.checkpoint import read_run_info
from chexnet.engine import StepContext
from chexnet.fileio import atomic_write
from chexnet.metrics import choose_thresholds
from chexnet.preprocess import Preprocessing, input_transform
from chexnet.runs import is_other_data, load_run_model, resolve_cache, saved_thresholds


def calibrate_run(run: str | Path, checkpoint: str = "best", method: str = "temperature",
                  cache: str | Path | None = None, batch_size: int = 64, trust_changed: bool = False,
                  min_positives: int = calibrator.MIN_POSITIVES) -> calibrator.Calibrator | None:
    """Fit and save the calibrator of ``run``'s ``checkpoint`` (see the module); returns it on rank 0."""
    from chexnet.evaluate import predict_split

    info, device = dist.init()
    try:
        run = Path(run)
        run_info = read_run_info(run)
        loaded = load_run_model(run, checkpoint, trust_changed=trust_changed)
        cache, _, index, meta = resolve_cache(run, run_info, cache, loaded.spec)
        if is_other_data(run_info, cache, meta):
            raise ValueError(f"{cache} is not the cache run {run} was trained on: a calibrator is fitted on the run's "
                             f"own validation split (pass its cache, or none)")
        spec = loaded.spec or Preprocessing(int(meta["size"]), loaded.cfg.input_size, loaded.cfg.input_transform)
        model = loaded.model.to(device)
        ctx = StepContext(device, loaded.cfg.precision, loaded.cfg.channels_last,
                          transform=input_transform(spec).to(device))
        _, probs, labels = predict_split(model, loaded.cfg, cache, index, meta, "val", "none", info, ctx, batch_size)
        if not info.is_main:
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal = calibrator.fit(probs, labels, loaded.cfg.labels, method, min_positives)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        cal.checkpoint, cal.epoch, cal.global_step = loaded.path.name, loaded.epoch, loaded.global_step
        cal.thresholds = _thresholds(run, loaded, probs, labels, cal)
        path = calibrator.save(run, cal)
        _record(run, cal)
        _print(cal, probs, labels, path)
        return cal
    finally:
        dist.teardown()


def _thresholds(run: Path, loaded, probs, labels, cal) -> dict:
    """The run's validation thresholds for this checkpoint (thresholds.json, else max F1 on these predictions),
    raw and mapped through the calibrator."""
    chosen, method, _ = saved_thresholds(run, loaded)
    names = list(loaded.cfg.labels)
    if chosen is None:
        values = np.atleast_1d(choose_thresholds(labels, probs, "f1")).astype(np.float64)
        chosen, method = {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values)}, "f1"
    raw = np.array([np.nan if chosen.get(n) is None else chosen[n] for n in names], dtype=np.float64)
    mapped = cal.apply(np.where(np.isfinite(raw), raw, 0.5)[None, :])[0]
    return {"method": method, "raw": chosen,
            "calibrated": {n: (None if not np.isfinite(r) else float(m)) for n, r, m in zip(names, raw, mapped)}}


def _record(run: Path, cal) -> None:
    path = run / "run.json"
    info = json.loads(path.read_text())
    info["calibrator"] = {"file": calibrator.CALIBRATOR, "method": cal.method, "checkpoint": cal.checkpoint,
                          "epoch": cal.epoch, "global_step": cal.global_step}
    atomic_write(path, json.dumps(info, indent=2))


def _print(cal, probs, labels, path: Path) -> None:
    after = cal.apply(probs)
    print(f"{cal.describe()} (epoch {cal.epoch}, step {cal.global_step}); in-sample on val:")
    head = "T" if cal.method == "temperature" else "slope / intercept"
    print(f"{'label':22s} {'n':>6s} {'pos':>5s} {head:>17s}   NLL before -> after   ECE before -> after")
    for c, name in enumerate(cal.labels):
        fit = (f"{cal.temperature[c]:.3f}" if cal.method == "temperature" or cal.temperature[c] else
               f"{cal.slope[c]:.3f} / {cal.intercept[c]:+.3f}")
        if name in cal.shared:
            fit += " (shared)"
        before, now = calibration.ece(labels[:, c], probs[:, c]), calibration.ece(labels[:, c], after[:, c])
        nll_b, nll_a = cal.val_nll_before[c], cal.val_nll_after[c]
        nll = f"{nll_b:.4f} -> {nll_a:.4f}" if nll_b is not None else "not in this split"
        ece = f"{before:.4f} -> {now:.4f}" if np.isfinite(before) else ""
        print(f"{name:22s} {cal.n[c]:6d} {cal.positives[c]:5d} {fit:>17s}   {nll:19s}   {ece}")
    print(f"wrote {path} (predict, evaluate, export and serve apply it to this checkpoint; --raw turns it off)",
          file=sys.stderr)
