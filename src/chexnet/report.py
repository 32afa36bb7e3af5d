"""Evaluation tables, reports and plots from a predictions table (:mod:`chexnet.predictions`, the file
``chexnet evaluate`` writes); the comparison of runs is :mod:`chexnet.compare`.

A label with no known label value in the evaluated split is *not scored*: every per-label number counts the rows
whose label is known; its AUROC is NaN (an empty cell in auroc.csv, ``null`` in metrics.json), its note says
"not in this dataset", and metrics.json lists it under ``labels_not_scored``.

Published AUROCs (:func:`published_auroc`) exist for NIH's 14 pathologies only: a run's other labels (e.g.
CheXpert's ``Lung Opacity``) have none (NaN), which the notes say, and a published mean is given only when
every label in the model's mean has a published number.

Derived labels (:mod:`chexnet.derived`: a data set's label that no model output stands for, scored by a rule
over the probabilities, e.g. ``Nodule or mass`` = max(Nodule, Mass)) are not in the predictions file: their
scores and labels go to ``derived.csv``, their rows after Mean in auroc.csv with the note
``derived: RULE``, AUROC and AUPRC only (:func:`derived_table`).

The plots are drawn by :mod:`chexnet.plots`.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet import metrics, subgroups
from chexnet.fileio import atomic_write
from chexnet.labels import PATHOLOGIES
from chexnet.plots import (
    MEAN_ROW,
    PUBLISHED_COLUMNS,
    plot_auroc_vs_published,
    plot_pr,
    plot_roc,
)
from chexnet.predictions import prediction_arrays, predicted_labels, validate_predictions

COMPARABILITY_NOTE = (
    "Published AUROCs were not measured on these images. CheXNet (Rajpurkar et al. 2017) "
    "used a random patient-wise 70/10/20 split; Wang et al. 2017 used NIH's official "
    "train/test lists, and that official test list is harder (models score lower on it). "
    "Read them as context for the order of magnitude, not as a head-to-head benchmark."
)
NOT_SCORED_NOTE = "not in this dataset"
NO_PUBLISHED_NOTE = ("No published AUROC for {labels}: the published numbers cover NIH's 14 pathologies only; "
                     "a published mean is n/a unless every label in the model's mean has one.")
DERIVED_NOTE = "derived: "  # the note of a derived label (chexnet.derived) begins with it, then its rule
DERIVED_SECTION = (
    "Labels of this data set that no model output stands for, each scored by the rule its cache records "
    "(meta.json, `source.derived_scores`) applied to the model's probabilities, e.g. `max(Nodule, Mass)`: the "
    "higher of the two. They are not model outputs: ranked against the data set's labels as any label is (AUROC "
    "with its patient-bootstrap CI, AUPRC), but no operating point was chosen for them, so no threshold, "
    "sensitivity, specificity or F1; they are in no mean, plot or subgroup table. Scores and labels per image: "
    "`derived.csv`."
)
THRESHOLD_NOTES = {
    "f1": "the threshold that maximizes F1 on the validation predictions",
    "youden": "the threshold that maximizes Youden's J (sensitivity + specificity - 1) on the validation predictions",
}


# --------------------------------------------------------------------------- published results


def published_auroc(labels=PATHOLOGIES) -> pd.DataFrame:
    """Published per-pathology test AUROC (label x source), shipped with the package, one row per label of
    ``labels`` in its order: NaN for a label without published numbers (all but NIH's 14).

    ``df.attrs["citations"]`` maps each source column to its reference;
    ``df.attrs["notes"]`` keeps the file's other comment lines.
    """
    text = resources.files("chexnet").joinpath("resources/published_auroc.csv").read_text(encoding="utf-8")
    comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header = rows[0].split(",")
    df = pd.DataFrame([r.split(",") for r in rows[1:]], columns=header).set_index("pathology").astype(float)
    df = df.reindex(list(labels))
    citations, notes = {}, []
    for line in comments:
        key, sep, rest = line.partition(":")
        if sep and key.strip() in df.columns:
            citations[key.strip()] = rest.strip()
        else:
            notes.append(line)
    df.attrs["citations"] = citations
    df.attrs["notes"] = notes
    return df


# --------------------------------------------------------------------------- evaluation table


def evaluation_table(
    y,
    p,
    patient_ids,
    y_val=None,
    p_val=None,
    threshold_method: str = "f1",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    thresholds=None,
    labels=PATHOLOGIES,
) -> pd.DataFrame:
    """Per-label metrics: one row per label of ``labels`` (the columns of ``y`` and ``p``, in order; default
    NIH's 14) + "Mean".

    Operating points: chosen on ``y_val`` / ``p_val`` (the validation split), or ``thresholds`` as given (one per
    label, NaN for none: the run's own, for an external data set), or none.

    Columns: prevalence, n_pos, auroc, auroc_ci_low, auroc_ci_high (patient bootstrap,
    percentile, ``1 - alpha``), auprc, threshold (chosen on ``y_val``/``p_val`` with
    ``threshold_method``), sensitivity, specificity, f1, chexnet2017, wang2017 (published
    AUROC; NaN for a label without one, see :func:`published_auroc`) and note. A label without positive or
    negative cases has NaN metrics (n/a) and is left out of every mean; the published means use the same labels,
    and are NaN when one of them has no published number. Without validation predictions the thresholded
    metrics are NaN. ``df.attrs`` keeps the settings and notes (``labels_without_published``: the labels that
    have no published AUROC).

    Labels may be NaN (missing): prevalence and n_pos count the known rows, every metric uses
    a pathology's known rows only, and a pathology with no known label is not scored (NaN
    metrics, n_pos <NA>, note "not in this dataset", listed in ``attrs["labels_not_scored"]``).
    """
    labels = tuple(labels)
    yy, known, p = metrics._as_2d_known(y, p)
    if yy.shape[1] != len(labels):
        raise ValueError(f"expected {len(labels)} classes ({', '.join(labels)}); got {yy.shape[1]}")
    y = metrics._with_missing(yy, known)  # bool, or float with NaN where missing: what the metrics take
    table, label_notes, ci, scored, defined = _ranking_metrics(y, p, patient_ids, labels, n_resamples, seed,
                                                               alpha)

    notes = []
    if (y_val is None) != (p_val is None):
        raise ValueError("give both y_val and p_val (validation labels and predictions), or neither")
    if y_val is not None and thresholds is not None:
        raise ValueError("give validation predictions or thresholds, not both")
    if y_val is not None:
        thresholds = metrics.choose_thresholds(y_val, p_val, method=threshold_method)
        threshold_source = "validation"
    elif thresholds is not None:
        thresholds = np.asarray(thresholds, dtype=np.float64)
        threshold_source = "run"
        notes.append("Thresholds: the run's own (thresholds.json, chosen on its validation split), not this data set's.")
    else:
        thresholds = np.full(len(labels), np.nan)
        threshold_source = None
        notes.append("No validation predictions were given: no thresholds, so no sensitivity/specificity/F1.")
    table["threshold"] = thresholds
    for key, values in metrics.binary_metrics(y, p, thresholds).items():
        if key != "ppv":
            table[key] = values

    unpublished = _add_published(table)
    if unpublished:
        notes.append(NO_PUBLISHED_NOTE.format(labels=", ".join(unpublished)))

    table["note"] = label_notes
    names = np.array(labels, dtype=object)
    not_scored = [str(n) for n in names[~scored]]
    if not_scored:
        notes.append(f"Not scored (no known label in this split): {', '.join(not_scored)}; left out of all means.")
    if not (defined | ~scored).all():
        skipped = ", ".join(names[~defined & scored])
        notes.append(f"AUROC is n/a for {skipped} (a single class in this split); left out of all means.")
    if threshold_source and np.isnan(thresholds).any():
        skipped = ", ".join(names[np.isnan(thresholds)])
        notes.append(f"No threshold for {skipped}: the validation split lacks positive (or negative) cases.")

    mean = table.loc[defined].drop(columns=["n_pos", "note"]).mean()  # floats only
    mean["prevalence"] = table["prevalence"].mean()
    mean["auroc_ci_low"], mean["auroc_ci_high"] = ci.mean_low, ci.mean_high
    mean["threshold"] = np.nan  # an average threshold means nothing
    for col in PUBLISHED_COLUMNS:  # a published mean over fewer labels than the model's would not compare
        if table.loc[defined, col].isna().any():
            mean[col] = np.nan
    mean_row = mean.to_frame(MEAN_ROW).T
    mean_row["n_pos"] = pd.array([pd.NA], dtype="Int64")
    mean_row["note"] = "" if defined.all() else f"mean over {int(defined.sum())} of {len(labels)}"
    table = pd.concat([table, mean_row[table.columns]])
    table.index.name = "pathology"

    table.attrs.update(
        n_images=int(len(y)),
        n_patients=int(len(np.unique(patient_ids))),
        n_resamples=int(n_resamples),
        seed=int(seed),
        alpha=float(alpha),
        threshold_method=threshold_method,
        threshold_source=threshold_source,
        notes=notes,
        labels_not_scored=not_scored,
        labels_without_published=unpublished,
    )
    return table


def _add_published(table: pd.DataFrame) -> list[str]:
    """Add the published AUROC columns (:data:`PUBLISHED_COLUMNS`) to ``table`` (indexed by label); returns the
    labels that have no published number (NaN in every column)."""
    published = published_auroc(table.index)
    for col in PUBLISHED_COLUMNS:
        table[col] = published[col].to_numpy()
    return [str(n) for n in table.index[published[list(PUBLISHED_COLUMNS)].isna().all(axis=1).to_numpy()]]


def _ranking_metrics(y, p, patient_ids, names, n_resamples: int, seed: int, alpha: float):
    """The threshold-free part of an evaluation table for labels ``names`` (the columns of ``y`` and ``p``, labels
    as :func:`evaluation_table` takes them): a table indexed by ``names`` with prevalence and n_pos over each
    label's known rows, auroc with its patient-bootstrap CI (NaN bounds where the AUROC is undefined) and auprc;
    each label's note ("not in this dataset", "n/a: no positive cases", "n/a: no negative cases", or ""); the
    bootstrap result; the masks scored (some label known) and defined (both classes among the known).
    Returns (table, notes, ci, scored, defined)."""
    yy, known, p = metrics._as_2d_known(y, p)
    metrics.check_finite(p)
    y = metrics._with_missing(yy, known)
    known_all = np.ones_like(yy) if known is None else known
    n_known = known_all.sum(axis=0)
    scored = n_known > 0
    defined = metrics.defined_classes(y)

    table = pd.DataFrame(index=pd.Index(list(names), name="pathology"))
    if known is None:
        table["prevalence"] = yy.mean(axis=0)
        table["n_pos"] = pd.array(yy.sum(axis=0), dtype="Int64")
    else:
        n_pos = yy.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            table["prevalence"] = np.where(scored, n_pos / n_known, np.nan)
        table["n_pos"] = pd.array([int(v) if s else pd.NA for v, s in zip(n_pos, scored)], dtype="Int64")
    table["auroc"] = metrics.auroc(y, p)
    ci = metrics.bootstrap_auroc_ci(y, p, groups=np.asarray(patient_ids), n_resamples=n_resamples, seed=seed,
                                    alpha=alpha)
    table["auroc_ci_low"], table["auroc_ci_high"] = ci.low, ci.high
    table.loc[~defined, ["auroc_ci_low", "auroc_ci_high"]] = np.nan
    table["auprc"] = metrics.auprc(y, p)
    notes = [NOT_SCORED_NOTE if not is_scored else "n/a: no positive cases" if not has_pos else
             "n/a: no negative cases" if not has_neg else ""
             for is_scored, has_pos, has_neg in zip(scored, yy.any(axis=0), (~yy & known_all).any(axis=0))]
    return table, notes, ci, scored, defined


def derived_table(y, scores, patient_ids, derived, n_resamples: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> pd.DataFrame:
    """Rows for derived labels (:mod:`chexnet.derived`), one per entry of ``derived``: ``y`` (n, d) the data
    set's values of those labels (1, 0, NaN: missing), ``scores`` (n, d) their rules applied to the model's
    probabilities, ``patient_ids`` for the bootstrap. Columns as :func:`evaluation_table`'s: prevalence, n_pos,
    AUROC with its patient-bootstrap CI and AUPRC as for any label; no operating point, so threshold,
    sensitivity, specificity and F1 are NaN, and so are the published AUROCs; the note is ``derived: RULE``
    (e.g. ``derived: max(Nodule, Mass)``), then why an AUROC is n/a. ``attrs["derived"]``: {label: rule text}."""
    derived = list(derived)
    table, label_notes, _, _, _ = _ranking_metrics(y, scores, patient_ids, [d.name for d in derived], n_resamples,
                                                   seed, alpha)
    for col in ("threshold", "sensitivity", "specificity", "f1", *PUBLISHED_COLUMNS):
        table[col] = np.nan
    table["note"] = [f"{DERIVED_NOTE}{d.text}" + (f"; {why}" if why else "") for d, why in zip(derived, label_notes)]
    table.attrs.update(derived={d.name: d.text for d in derived}, alpha=float(alpha))
    return table


def with_derived(table: pd.DataFrame, derived_rows: pd.DataFrame | None) -> pd.DataFrame:
    """``table`` (:func:`evaluation_table`'s) with the rows of :func:`derived_table` after its Mean row: not
    model outputs, so in no mean. ``attrs``: the table's, with ``derived`` ({label: rule text}; {} for none)."""
    attrs = {**table.attrs, "derived": {}}
    if derived_rows is not None and len(derived_rows):
        table = pd.concat([table, derived_rows[table.columns]])
        table.index.name = "pathology"
        attrs["derived"] = dict(derived_rows.attrs["derived"])
    else:
        table = table.copy()
    table.attrs = attrs
    return table


# --------------------------------------------------------------------------- text output


def _fmt_value(col: str, value) -> str:
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return "n/a" if col not in ("n_pos", "threshold", "note") else ""
    if col == "n_pos":
        return str(int(value))
    if col.startswith("p ") or col == "p_value":
        return "<0.001" if value < 0.001 else f"{value:.3f}"
    if col.startswith("delta"):
        return f"{value:+.3f}"
    return f"{value:.3f}"


_DISPLAY = {
    "prevalence": "Prev",
    "n_pos": "N+",
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "threshold": "Thr",
    "sensitivity": "Sens",
    "specificity": "Spec",
    "f1": "F1",
    "chexnet2017": "CheXNet'17",
    "wang2017": "Wang'17",
    "note": "Note",
}


def _text_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string cells; AUROC and its CI are merged into one "AUROC [95% CI]" cell."""
    has_ci = {"auroc", "auroc_ci_low", "auroc_ci_high"} <= set(df.columns)
    cols = [c for c in df.columns if not (has_ci and c in ("auroc_ci_low", "auroc_ci_high"))
            and not (c in PUBLISHED_COLUMNS and df[c].isna().all())]  # no label has a published number
    if "note" in cols and not df["note"].astype(bool).any():
        cols.remove("note")
    level = int(round(100 * (1 - df.attrs.get("alpha", 0.05))))
    header = [df.index.name or ""] + [
        f"AUROC [{level}% CI]" if (c == "auroc" and has_ci) else _DISPLAY.get(c, str(c)) for c in cols
    ]
    rows = []
    for name, row in df.iterrows():
        cells = [str(name)]
        for c in cols:
            cell = "" if name == MEAN_ROW and str(c).startswith("p ") else _fmt_value(c, row[c])
            if c == "auroc" and has_ci and cell != "n/a" and not math.isnan(row["auroc_ci_low"]):
                cell += f" [{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}]"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def format_table(df: pd.DataFrame) -> str:
    """A fixed-width text table for the terminal (evaluation or comparison tables); a rule line before the Mean row
    and before the first derived label (``attrs["derived"]``, :func:`with_derived`)."""
    header, rows = _text_cells(df)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    first_derived = next(iter(df.attrs.get("derived") or {}), None)
    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(header), "  ".join("-" * w for w in widths)]
    for cells in rows:
        if cells[0] in (MEAN_ROW, first_derived):
            out.append("  ".join("-" * w for w in widths))
        out.append(line(cells))
    return "\n".join(out)


def markdown_table(df: pd.DataFrame) -> str:
    header, rows = _text_cells(df)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(f"**{c}**" if r[0] == MEAN_ROW and c else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _json_safe(value):
    """NaN/inf -> None and numpy scalars -> Python, recursively, for strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if value is pd.NA:
        return None
    return value


# --------------------------------------------------------------------------- evaluation output


def write_evaluation(
    out_dir,
    predictions_df: pd.DataFrame,
    val_predictions_df: pd.DataFrame | None = None,
    threshold_method: str = "f1",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    context: dict | None = None,
    attributes: pd.DataFrame | None = None,
    thresholds=None,
    derived=(),
    derived_y=None,
    rules=("f1",),
    rule_thresholds: dict | None = None,
    calibrated: str | None = None,
    plots: bool = True,
) -> pd.DataFrame:
    """Evaluate a predictions table and write ``metrics.json``, ``auroc.csv``, ``report.md``,
    ``roc.png``, ``pr.png`` and ``auroc_vs_published.png`` into ``out_dir``: one row (and plot panel) per label
    of the table (:func:`predicted_labels`, in its order), published AUROCs beside those that have one. Without
    ``plots``, no figure (``*.png``; report.md links none): the same numbers, seconds sooner per split on a CPU.

    ``val_predictions_df`` (same format, same labels) supplies the thresholds; ``context`` (e.g. run,
    checkpoint, split, tta) is recorded in metrics.json and report.md. ``attributes`` (columns
    sex, age, view; one row per prediction, same order) adds ``subgroups.csv`` and a subgroup
    section to report.md (:mod:`chexnet.subgroups`). Returns the table (:func:`with_derived`'s).

    ``derived`` (:class:`chexnet.derived.DerivedLabel` list) with ``derived_y`` ((n, len(derived)): the data set's
    values of those labels, 1 / 0 / NaN, rows as ``predictions_df``'s) adds derived labels, scored by their rules
    over the probabilities (:func:`derived_table`): rows after Mean in auroc.csv and the returned table,
    metrics.json's ``derived_labels``, a section of report.md, and ``derived.csv`` (image, patient_id, then
    ``score_<label>`` and ``label_<label>`` per derived label); not in the plots or subgroups.

    Calibration and operating points (:mod:`chexnet.clinical`): ``calibration.csv`` and ``reliability.png`` of the
    probabilities as given (``calibrated``: the calibrator's method when they are calibrated, said in the report),
    and ``operating_points.csv`` for each rule of ``rules`` (:mod:`chexnet.operating_points`), its thresholds chosen
    on the validation predictions, or ``rule_thresholds`` ({rule: one threshold per label}, e.g. the run's own on
    another data set); without either, no operating points. Both in metrics.json (``calibration``,
    ``operating_points``) and report.md; ``table.attrs["rule_thresholds"]`` holds the thresholds used.

    Missing labels (see the module doc): metrics.json's ``labels_not_scored`` lists the pathologies
    without any known label in the split (their AUROC is ``null``); the curves use the known rows.
    """
    from chexnet import clinical, operating_points

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_df = validate_predictions(predictions_df, "predictions")
    names = predicted_labels(predictions_df)
    images, patients, p, y = prediction_arrays(predictions_df)
    metrics.check_finite(p, images)
    y_val = p_val = None
    if val_predictions_df is not None:
        val_predictions_df = validate_predictions(val_predictions_df, "validation predictions")
        if predicted_labels(val_predictions_df) != names:
            raise ValueError(f"validation predictions have labels {list(predicted_labels(val_predictions_df))}; "
                             f"the predictions have {list(names)}")
        val_images, _, p_val, y_val = prediction_arrays(val_predictions_df)
        metrics.check_finite(p_val, val_images)
    table = evaluation_table(
        y, p, patients, y_val, p_val, threshold_method=threshold_method, n_resamples=n_resamples, seed=seed,
        alpha=alpha, thresholds=thresholds, labels=names,
    )
    extra = _write_derived(out_dir, images, patients, p, names, derived, derived_y, n_resamples, seed, alpha)
    context = dict(context or {})
    citations = _citations(table)
    _, cal_md, cal_json = clinical.write_calibration(out_dir, y, p, patients, names, n_resamples, seed, alpha,
                                                     calibrated, plot=plots)
    same_split = val_predictions_df is not None and val_predictions_df is predictions_df
    if p_val is not None:
        rule_thresholds = {r: operating_points.choose(y_val, p_val, r) for r in rules}
        source = ("chosen per label on this split itself (the validation split): each rule chosen again inside "
                  "every bootstrap resample" if same_split else "chosen per label on the validation split")
    else:
        source = "the run's own (thresholds.json, chosen on its validation split)"
    table.attrs["rule_thresholds"] = dict(rule_thresholds or {})
    op_md, op_json = "", None
    if rule_thresholds:
        _, op_md, op_json = clinical.write_operating_points(out_dir, y, p, patients, names, rule_thresholds, source,
                                                            n_resamples, seed, alpha, rechoose=same_split)

    full = with_derived(table, extra)
    atomic_write(out_dir / "auroc.csv", full.to_csv(float_format="%.6f"))
    payload = {
        "context": context,
        "settings": {k: table.attrs[k] for k in ("n_images", "n_patients", "n_resamples", "seed", "alpha",
                                                  "threshold_method", "threshold_source")},
        "per_pathology": table.drop(index=MEAN_ROW).to_dict(orient="index"),
        "mean": table.loc[MEAN_ROW].to_dict(),
        "labels_not_scored": list(table.attrs["labels_not_scored"]),
        "derived_labels": _derived_json(extra, derived),
        "notes": table.attrs["notes"] + ([DERIVED_SECTION] if extra is not None else [])
        + ([COMPARABILITY_NOTE] if citations else []),
        "published_sources": citations,
        "calibration": cal_json,
        "operating_points": op_json,
    }
    atomic_write(out_dir / "metrics.json", json.dumps(_json_safe(payload), indent=2) + "\n")

    if plots:
        plot_roc(y, p, table, out_dir / "roc.png")
        plot_pr(y, p, table, out_dir / "pr.png")
        plot_auroc_vs_published(table, out_dir / "auroc_vs_published.png")
    sub_md = None
    if attributes is not None:
        sub = subgroups.subgroup_table(y, p, patients, attributes, n_resamples=n_resamples, seed=seed, alpha=alpha,
                                       labels=names)
        atomic_write(out_dir / "subgroups.csv", sub.to_csv(index=False, float_format="%.6f"))
        sub_md = subgroups.subgroup_markdown(sub)
    atomic_write(out_dir / "report.md", _report_markdown(table, context, citations, sub_md, extra, cal_md + "\n" + op_md,
                                                         plots))
    return full


def _citations(table: pd.DataFrame) -> dict[str, str]:
    """{published column: its reference} when some label of ``table`` has a published AUROC; else {}."""
    if set(table.index.drop(MEAN_ROW)) <= set(table.attrs["labels_without_published"]):
        return {}
    return {k: v for k, v in published_auroc().attrs["citations"].items() if k in PUBLISHED_COLUMNS}


DERIVED_COLUMNS = ("prevalence", "n_pos", "auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "note")


def _write_derived(out_dir: Path, images, patients, p, names, derived, derived_y, n_resamples, seed, alpha):
    """Score the derived labels (:func:`derived_table`) by their rules over ``p`` (columns: the labels ``names``)
    and write ``derived.csv``; None when there are none."""
    derived = list(derived)
    if not derived:
        return None
    derived_y = np.asarray(derived_y, dtype=np.float64)
    if derived_y.shape != (len(images), len(derived)):
        raise ValueError(f"derived labels: expected values of shape ({len(images)}, {len(derived)}); "
                         f"got {derived_y.shape}")
    scores = np.column_stack([d.score(p, names) for d in derived])
    frame = pd.DataFrame({"image": list(images), "patient_id": list(patients)})
    for j, d in enumerate(derived):
        frame[f"score_{d.name}"] = scores[:, j]
        frame[f"label_{d.name}"] = pd.array(derived_y[:, j], dtype="Float64").astype("Int8")
    atomic_write(out_dir / "derived.csv", frame.to_csv(index=False, float_format="%.17g"))
    return derived_table(derived_y, scores, patients, derived, n_resamples=n_resamples, seed=seed, alpha=alpha)


def _derived_json(extra: pd.DataFrame | None, derived) -> dict:
    """metrics.json's ``derived_labels``: {label: {rule, of, derived (the rule as text), prevalence, ..., note}}."""
    if extra is None:
        return {}
    return {d.name: {"rule": d.rule, "of": list(d.of), "derived": d.text,
                     **extra.loc[d.name, list(DERIVED_COLUMNS)].to_dict()} for d in derived}


def _report_markdown(table: pd.DataFrame, context: dict, citations: dict, subgroups_md: str | None = None,
                     derived_rows: pd.DataFrame | None = None, clinical_md: str = "", plots: bool = True) -> str:
    a = table.attrs
    level = int(round(100 * (1 - a["alpha"])))
    lines = ["# Evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += [
        f"- images: {a['n_images']}, patients: {a['n_patients']}",
        f"- AUROC {level}% CI: percentile bootstrap over patients, {a['n_resamples']} resamples, seed {a['seed']}",
    ]
    if a["threshold_source"] == "run":
        lines.append("- thresholds: the run's own (thresholds.json, chosen on its validation split), kept for this "
                     "data set; sensitivity, specificity and F1 are measured at them")
    elif a["threshold_source"]:
        lines.append(f"- thresholds: {THRESHOLD_NOTES[a['threshold_method']]} (method `{a['threshold_method']}`); "
                     "sensitivity, specificity and F1 are measured at that threshold")
    lines += ["", markdown_table(table), ""]
    if derived_rows is not None:
        shown = derived_rows.loc[:, list(DERIVED_COLUMNS)]
        shown.attrs = dict(derived_rows.attrs)
        lines += ["## Derived labels (not model outputs)", "", DERIVED_SECTION, "", markdown_table(shown), ""]
    if clinical_md.strip():
        lines += [clinical_md.rstrip(), ""]
    if subgroups_md:
        lines += ["## Subgroups", "",
                  f"AUROC [{level}% CI] (positives) by sex, age band and view; blank where a cell has fewer than "
                  f"{subgroups.MIN_POSITIVES} positives. Also in `subgroups.csv`.", "", subgroups_md, ""]
    lines += ["## Notes", ""]
    lines += [f"- {n}" for n in a["notes"]]
    lines += [f"- {COMPARABILITY_NOTE}", ""] if citations else [""]
    lines += ["## Published sources", ""]
    lines += [f"- `{k}` ({PUBLISHED_COLUMNS[k]}): {v}" for k, v in citations.items()] or [
        "- none: no label of this run has a published AUROC (the published numbers cover NIH's 14 pathologies)"]
    if plots:
        lines += ["", "## Plots", "", "![ROC](roc.png)", "", "![PR](pr.png)", "",
                  "![AUROC vs published](auroc_vs_published.png)", ""]
    else:
        lines += [""]
    return "\n".join(lines)
