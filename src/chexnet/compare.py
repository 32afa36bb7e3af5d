"""Comparison of runs evaluated on the same images (``chexnet evaluate --compare``): per-label AUROC, wins and
paired p-values (:func:`compare_runs`), from predictions files (:mod:`chexnet.predictions`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexnet import metrics
from chexnet.fileio import atomic_write
from chexnet.plots import MEAN_ROW, plot_compare
from chexnet.predictions import (
    label_columns,
    prediction_arrays,
    prediction_columns,
    predicted_labels,
    prob_columns,
    read_predictions,
    validate_predictions,
)
from chexnet.report import markdown_table

def _read_runs(prediction_csvs) -> dict[str, pd.DataFrame]:
    """{name: validated predictions table} from (name, path or DataFrame) pairs; names must be unique, the
    probabilities finite."""
    frames = {}
    for name, src in prediction_csvs:
        if name in frames:
            raise ValueError(f"run name {name!r} given twice; names must be unique")
        df = validate_predictions(src, str(name)) if isinstance(src, pd.DataFrame) else read_predictions(src)
        metrics.check_finite(df.loc[:, list(prob_columns(predicted_labels(df)))].to_numpy(dtype=float),
                             df["image"].to_numpy())
        frames[name] = df
    return frames


def _shared_labels(frames: dict[str, pd.DataFrame]) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """(the labels every run has, in the first run's order; {run: its labels the others do not all have}, for
    the runs that have such). ValueError when the runs share no label."""
    per_run = {name: predicted_labels(df) for name, df in frames.items()}
    first = next(iter(per_run.values()))
    shared = tuple(n for n in first if all(n in labels for labels in per_run.values()))
    if not shared:
        raise ValueError("the runs share no label: " + "; ".join(f"{name}: {', '.join(labels)}"
                                                                for name, labels in per_run.items()))
    differ = {name: [n for n in labels if n not in shared] for name, labels in per_run.items()}
    return shared, {name: left for name, left in differ.items() if left}


def _align(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Check all runs cover the same images with the same labels (tables with the same label columns); reorder
    to the first run's order."""
    names = list(frames)
    ref_name, ref = names[0], frames[names[0]]
    columns = list(label_columns(predicted_labels(ref)))
    ref_images = pd.Index(ref["image"])
    out = {ref_name: ref.reset_index(drop=True)}
    for name in names[1:]:
        df = frames[name]
        images = pd.Index(df["image"])
        only_ref, only_this = ref_images.difference(images), images.difference(ref_images)
        if len(only_ref) or len(only_this):
            raise ValueError(
                f"runs {ref_name!r} and {name!r} were evaluated on different image sets "
                f"({len(ref_images)} vs {len(images)} images; {len(only_ref)} only in {ref_name!r}, e.g. "
                f"{list(only_ref[:3])}; {len(only_this)} only in {name!r}, e.g. {list(only_this[:3])}). "
                "Evaluate both on the same split (same cache and split file) before comparing."
            )
        aligned = df.set_index("image").loc[ref_images].reset_index()
        this_labels = aligned.loc[:, columns].to_numpy(dtype=np.float64, na_value=np.nan)
        ref_labels = ref.loc[:, columns].to_numpy(dtype=np.float64, na_value=np.nan)
        both_missing = np.isnan(this_labels) & np.isnan(ref_labels)  # missing in both runs: the same label
        mismatch = ((this_labels != ref_labels) & ~both_missing).any(axis=1)
        if mismatch.any():
            raise ValueError(
                f"runs {ref_name!r} and {name!r} have different labels for {int(mismatch.sum())} of the same images "
                f"(e.g. {list(ref_images[mismatch][:3])}); they were not evaluated against the same ground truth."
            )
        out[name] = aligned
    return out


def compare_runs(prediction_csvs, out_dir=None, alpha: float = 0.05, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[pd.DataFrame, str]:
    """Compare runs evaluated on the same images: per-label AUROC, wins and paired p-values.

    ``prediction_csvs`` is a list of (name, path or predictions DataFrame); the first is
    the reference A. The runs are compared on the labels they all have (rows in A's order); the labels only some
    have are left out, named in the text and ``table.attrs["labels_left_out"]`` ({run: labels}). For each other
    run B the table has columns ``AUROC <name>`` per
    run, ``delta <B>`` (B - A) and ``p <B>``: two-sided, unadjusted for the number of labels, from
    :func:`chexnet.metrics.paired_auroc_test` -- a paired bootstrap over patients (``n_resamples``,
    ``seed``) when a patient has several images, as in NIH (the CIs are clustered by patient too), and
    the exact DeLong test only when every patient has one image. The text and ``compare.md`` name the
    method (``table.attrs["method"]``). Runs on different image sets are refused; the same set in a
    different order is aligned by image name. With ``out_dir``, writes ``compare.csv``, ``compare.md``
    and ``compare.png``. Returns (table, text summary). Missing labels (empty cells, NaN) are left out
    per label; a label with no known value is not scored (NaN AUROC, left out of counts and means).
    """
    if len(prediction_csvs) < 2:
        raise ValueError("compare needs at least two runs")
    frames = _read_runs(prediction_csvs)
    labels, left_out = _shared_labels(frames)
    frames = _align({name: df.loc[:, list(prediction_columns(labels))] for name, df in frames.items()})
    names = list(frames)
    a_name = names[0]
    _, patients, p_a, y = prediction_arrays(frames[a_name])
    defined = metrics.defined_classes(y)

    table = pd.DataFrame(index=pd.Index(list(labels), name="pathology"))
    for name in names:
        table[f"AUROC {name}"] = metrics.auroc(y, prediction_arrays(frames[name])[2])
    lines = [f"{len(y)} images of {len(np.unique(patients))} patients; reference run A = {a_name!r}."]
    if left_out:
        lines.append(f"compared on the {len(labels)} labels every run has; left out, not in every run: "
                     + "; ".join(f"{name}'s {', '.join(n)}" for name, n in left_out.items()) + ".")
    method = None
    for b_name in names[1:]:
        p_b = prediction_arrays(frames[b_name])[2]
        test = metrics.paired_auroc_test(y, p_b, p_a, patients, n_resamples=n_resamples, seed=seed)
        method = test.method
        table[f"delta {b_name}"] = table[f"AUROC {b_name}"] - table[f"AUROC {a_name}"]
        table[f"p {b_name}"] = test.p_value
        delta = table.loc[defined, f"delta {b_name}"]
        sig = table.loc[defined, f"p {b_name}"] < alpha
        better, worse = int((delta > 0).sum()), int((delta < 0).sum())
        lines.append(
            f"{b_name} better than {a_name} on {better} of {int(defined.sum())} pathologies "
            f"(worse on {worse}); p < {alpha:g} (unadjusted): {int((sig & (delta > 0)).sum())} better, "
            f"{int((sig & (delta < 0)).sum())} worse."
        )
    scored = ~np.isnan(y).all(axis=0) if y.dtype.kind == "f" else np.ones(y.shape[1], dtype=bool)
    label_names = np.array(labels, dtype=object)
    if not (defined | ~scored).all():
        lines.append(f"n/a (single class in this split, left out of counts and means): "
                     f"{', '.join(label_names[~defined & scored])}.")
    if not scored.all():
        lines.append(f"not scored (no known label in this split, left out of counts and means): "
                     f"{', '.join(label_names[~scored])}.")
    lines.append(f"p-values: {method}, two-sided.")
    mean = table.loc[defined].mean()
    for b_name in names[1:]:
        mean[f"p {b_name}"] = np.nan
    table.loc[MEAN_ROW] = mean
    table.attrs["method"] = method
    table.attrs["labels_left_out"] = left_out
    text = "\n".join(lines)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "compare.csv", table.to_csv(float_format="%.6f"))
        atomic_write(
            out_dir / "compare.md",
            "# Comparison\n\n" + "\n".join(f"- {l}" for l in lines) + "\n\n" + markdown_table(table)
            + "\n\n![AUROC per pathology](compare.png)\n"
        )
        plot_compare(table, names, out_dir / "compare.png")
    return table, text
