"""AUROC by patient subgroup: sex, age band, view position and, in a combined cache, source, with patient-bootstrap
CIs; ECE and Brier score beside them.

A model can be good on average and poor for a group (AP films come from sicker, bed-bound patients; the very
old and the very young are few). ``chexnet evaluate`` writes the table below as ``subgroups.csv`` and as a
section of ``report.md``. One row per (group, subgroup, label), labels the run's, in its order::

    group, subgroup, pathology, n, n_pos, auroc, auroc_ci_low, auroc_ci_high, ece, brier

``n`` images of the subgroup, ``n_pos`` of them positive for the label (the ``pathology`` column). The AUROC and
its 95% CI (percentile bootstrap over the subgroup's patients) are left blank where a cell has fewer than
:data:`MIN_POSITIVES` positives (or no negative): too few to say anything.

``ece`` (equal-width, :func:`chexnet.calibration.ece`) and ``brier`` are the cell's calibration on its known rows
(point estimates; blank without a known row): a model calibrated overall can be miscalibrated for a group.
The ``source`` group (one subgroup per source) appears where the attributes have a ``source`` column with more
than one value.

Labels may be NaN (missing): ``n_pos`` counts known positives, "no negative" means no known negative,
and the AUROC and CI use the cell's known rows only; a label missing for the whole subgroup is blank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chexnet import calibration, metrics
from chexnet.labels import PATHOLOGIES

MIN_POSITIVES = 5
AGE_BANDS = ("0-20", "21-40", "41-60", "61-80", "81+")
AGE_EDGES = (20, 40, 60, 80)  # upper ends (inclusive) of the first four bands, in years
MAX_AGE = 120  # ages above this are data-entry errors (NIH has a few): in no band
COLUMNS = ["group", "subgroup", "pathology", "n", "n_pos", "auroc", "auroc_ci_low", "auroc_ci_high", "ece", "brier"]


def age_band(age) -> np.ndarray:
    """Age in years -> band label ('' for unknown or implausible ages)."""
    age = np.asarray(age, dtype=np.float64)
    idx = np.digitize(age, AGE_EDGES, right=True)
    out = np.array(AGE_BANDS, dtype=object)[np.minimum(idx, len(AGE_BANDS) - 1)]
    out[~np.isfinite(age) | (age < 0) | (age > MAX_AGE)] = ""
    return out


def subgroup_masks(attributes: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(group, subgroup, boolean mask) for sex (M, F), age band and view (PA, AP), from columns sex/age/view."""
    sex = attributes["sex"].astype(str).str.upper().to_numpy()
    view = attributes["view"].astype(str).str.upper().to_numpy()
    band = age_band(attributes["age"].to_numpy())
    out = [("sex", s, sex == s) for s in ("M", "F")]
    out += [("age", b, band == b) for b in AGE_BANDS]
    out += [("view", v, view == v) for v in ("PA", "AP")]
    if "source" in attributes.columns and attributes["source"].nunique() > 1:
        src = attributes["source"].astype(str).to_numpy()
        out += [("source", s, src == s) for s in dict.fromkeys(src)]
    return out


def subgroup_table(y, p, patient_ids, attributes: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
                   alpha: float = 0.05, labels=PATHOLOGIES) -> pd.DataFrame:
    """The long table described in the module docstring: labels ``y`` (NaN: missing) and scores ``p`` are (n, k),
    one column per label of ``labels`` (default NIH's 14)."""
    yy, known, p = metrics._as_2d_known(y, p)
    y = metrics._with_missing(yy, known)  # bool, or float with NaN where missing
    patient_ids = np.asarray(patient_ids)
    if len(attributes) != len(y):
        raise ValueError(f"subgroup attributes have {len(attributes)} rows for {len(y)} predictions")
    if len(labels) != y.shape[1]:
        raise ValueError(f"{len(labels)} label names ({', '.join(labels)}) for {y.shape[1]} columns of labels")
    rows = []
    for group, sub, mask in subgroup_masks(attributes.reset_index(drop=True)):
        ys, ps = y[mask], p[mask]
        n_pos = yy[mask].sum(axis=0)
        n_known = len(ys) if known is None else known[mask].sum(axis=0)
        enough = (n_pos >= MIN_POSITIVES) & (n_pos < n_known)
        auc = np.full(y.shape[1], np.nan)
        low, high = auc.copy(), auc.copy()
        if enough.any():
            cols = np.flatnonzero(enough)
            auc[cols] = metrics.auroc(ys[:, cols], ps[:, cols])
            ci = metrics.bootstrap_auroc_ci(ys[:, cols], ps[:, cols], groups=patient_ids[mask],
                                            n_resamples=n_resamples, seed=seed, alpha=alpha)
            low[cols], high[cols] = ci.low, ci.high
        yf = np.asarray(y[mask], np.float64)
        for c, name in enumerate(labels):
            rows.append((group, sub, name, int(mask.sum()), int(n_pos[c]), auc[c], low[c], high[c],
                         calibration.ece(yf[:, c], ps[:, c]), calibration.brier(yf[:, c], ps[:, c])))
    return pd.DataFrame(rows, columns=COLUMNS)


def subgroup_markdown(table: pd.DataFrame) -> str:
    """A label x subgroup Markdown table of "AUROC [CI]" cells (blank: fewer than 5 positives)."""
    keys = list(dict.fromkeys(zip(table["group"], table["subgroup"])))
    header = ["pathology"] + [f"{g} {s}" for g, s in keys]
    n_row = ["images (n)"] + [str(int(table[(table["group"] == g) & (table["subgroup"] == s)]["n"].iloc[0]))
                              for g, s in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|",
             "| " + " | ".join(n_row) + " |"]
    by_key = table.set_index(["group", "subgroup", "pathology"])
    for name in dict.fromkeys(table["pathology"]):
        cells = [name]
        for g, s in keys:
            r = by_key.loc[(g, s, name)]
            cells.append("" if not np.isfinite(r["auroc"]) else
                         f"{r['auroc']:.3f} [{r['auroc_ci_low']:.3f}, {r['auroc_ci_high']:.3f}] ({int(r['n_pos'])}+)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
