"""Plots of evaluation and comparison tables (the tables come from :mod:`chexnet.report` and :mod:`chexnet.compare`).

Plots use matplotlib's object API (``Figure`` + Agg via ``savefig``), never pyplot, so
nothing here changes the global backend.

The table row / column names the plots and :mod:`chexnet.report` share (``MEAN_ROW``, ``PUBLISHED_COLUMNS``)
are defined here; report imports them. Every plot draws the labels of the table it is given (its rows but Mean,
in order: the run's labels), so a figure is sized by their number.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MEAN_ROW = "Mean"
PUBLISHED_COLUMNS = {"chexnet2017": "CheXNet 2017", "wang2017": "Wang et al. 2017"}
MAX_COLUMNS = 4  # panels per row of a curve grid (14 labels: 4 x 4, 16 x 16 inches)
PANEL_INCHES = 4


def _figure(n_panels: int, title: str):
    """A grid of ``n_panels`` square panels, at most :data:`MAX_COLUMNS` per row; the spare ones hidden."""
    from matplotlib.figure import Figure

    cols = max(1, min(MAX_COLUMNS, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows))
    # fixed spacing rather than layout="constrained": the same look for square panels, without its solver (about
    # half of an evaluation's plotting time)
    fig.subplots_adjust(left=0.6 / (PANEL_INCHES * cols), right=1 - 0.2 / (PANEL_INCHES * cols), bottom=0.5 / (
        PANEL_INCHES * rows), top=1 - 1.0 / (PANEL_INCHES * rows), wspace=0.3, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title, y=1 - 0.3 / (PANEL_INCHES * rows))
    return fig, axes


def _labels(table: pd.DataFrame, p: np.ndarray) -> list[str]:
    """The labels of an evaluation table (its rows before Mean), one per column of ``p``."""
    names = [str(n) for n in table.index if n != MEAN_ROW][: p.shape[1]]
    if len(names) != p.shape[1]:
        raise ValueError(f"the table has {len(names)} labels for {p.shape[1]} columns of scores")
    return names


def _known(y: np.ndarray, p: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Column ``c`` of labels and scores on the rows whose label is known (NaN: missing)."""
    yc, pc = np.asarray(y[:, c], dtype=np.float64), np.asarray(p[:, c])
    known = ~np.isnan(yc)
    return yc[known], pc[known]


def plot_roc(y: np.ndarray, p: np.ndarray, table: pd.DataFrame, path) -> None:
    """ROC curve per label of ``table`` (one panel each, the columns of ``y`` / ``p`` in its order), each from
    the rows whose label is known."""
    from sklearn.metrics import roc_curve

    names = _labels(table, p)
    fig, axes = _figure(len(names), "ROC curves")
    for c, (ax, name) in enumerate(zip(axes, names)):
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
        if math.isnan(table.loc[name, "auroc"]):
            ax.set_title(f"{name}: n/a")
            ax.text(0.5, 0.5, table.loc[name, "note"], ha="center", va="center")
            continue
        fpr, tpr, _ = roc_curve(*_known(y, p, c))
        ax.plot(fpr, tpr, lw=1.5)
        ax.set_title(f"{name}: AUROC {table.loc[name, 'auroc']:.3f}")
        sens, spec = table.loc[name, "sensitivity"], table.loc[name, "specificity"]
        if not (math.isnan(sens) or math.isnan(spec)):
            ax.plot([1 - spec], [sens], "o", color="C3", ms=5)  # operating point at the chosen threshold
    fig.savefig(path, dpi=80)


def plot_pr(y: np.ndarray, p: np.ndarray, table: pd.DataFrame, path) -> None:
    """Precision-recall curve per label of ``table``, with the prevalence (chance) line; known labels only."""
    from sklearn.metrics import precision_recall_curve

    names = _labels(table, p)
    fig, axes = _figure(len(names), "Precision-recall curves")
    for c, (ax, name) in enumerate(zip(axes, names)):
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
        yc, pc = _known(y, p, c)
        if not (yc == 1).any():
            ax.set_title(f"{name}: n/a")
            ax.text(0.5, 0.5, "not in this dataset" if len(yc) == 0 else "no positive cases", ha="center",
                    va="center")
            continue
        precision, recall, _ = precision_recall_curve(yc, pc)
        ax.step(recall, precision, where="post", lw=1.5)
        ax.axhline(table.loc[name, "prevalence"], color="0.7", lw=0.8, ls="--")
        ax.set_title(f"{name}: AUPRC {table.loc[name, 'auprc']:.3f}")
    fig.savefig(path, dpi=80)


def _grouped_bars(series: dict[str, np.ndarray], labels, path, title: str, errors: dict | None = None) -> None:
    """Grouped bar chart of AUROC per label of ``labels`` (a table's rows, Mean included), one bar per series;
    an inch per label (and more for many series), at least 8."""
    from matplotlib.figure import Figure

    labels = [str(n) for n in labels]
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(8, 1.0 * len(labels) * max(1, len(series) / 3)), 5.5), layout="constrained")
    ax = fig.subplots()
    lowest = 0.5
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        offset = x + (i - (len(series) - 1) / 2) * width
        yerr = None
        if errors and name in errors:
            low, high = (np.asarray(v, dtype=float) for v in errors[name])
            yerr = np.nan_to_num(np.vstack([values - low, high - values]))
        ax.bar(offset, np.nan_to_num(values), width, label=name, yerr=yerr, capsize=2)
        for xi in offset[np.isnan(values)]:
            ax.text(xi, 0.0, "n/a", ha="center", va="bottom", rotation=90, fontsize="x-small")
        if np.isfinite(values).any():
            lowest = min(lowest, math.floor(np.nanmin(values) * 10) / 10)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(lowest, 1.0)
    for t in ax.texts:  # n/a markers sit on the axis floor
        t.set_y(lowest + 0.005)
    ax.set_ylabel("AUROC")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=len(series), fontsize="small")
    fig.savefig(path, dpi=100)


def plot_auroc_vs_published(table: pd.DataFrame, path) -> None:
    """This model's AUROC (with bootstrap CI) per label next to the published CheXNet / Wang et al. values, a
    bar where a label has one (NIH's 14: "n/a" for the others); without any, this model's bars alone."""
    series = {"this model": table["auroc"].to_numpy()}
    published = {label: table[col].to_numpy(dtype=float) for col, label in PUBLISHED_COLUMNS.items()}
    series.update({label: values for label, values in published.items() if np.isfinite(values).any()})
    errors = {"this model": (table["auroc_ci_low"].to_numpy(), table["auroc_ci_high"].to_numpy())}
    title = ("Per-label AUROC vs published (different test splits; see report.md)" if len(series) > 1 else
             "Per-label AUROC (no published AUROC for these labels; see report.md)")
    _grouped_bars(series, table.index, path, title, errors)


def plot_compare(table: pd.DataFrame, names, path) -> None:
    """Per-label AUROC of each run (``AUROC <name>`` columns of a comparison table, rows its labels and Mean),
    grouped bars."""
    _grouped_bars({name: table[f"AUROC {name}"].to_numpy() for name in names}, table.index, path,
                  "Per-label AUROC on the same test images")


def plot_reliability(y: np.ndarray, p: np.ndarray, names, path, n_bins: int = 15) -> None:
    """Reliability diagram per label: observed frequency against mean predicted probability per equal-width bin
    (known rows), the bin counts as bars underneath, the diagonal of perfect calibration."""
    from chexnet.calibration import reliability

    fig, axes = _figure(len(names), "Reliability (equal-width bins; bars: images per bin)")
    for c, (ax, name) in enumerate(zip(axes, names)):
        r = reliability(y[:, c], p[:, c], n_bins)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        if len(r):  # the counts as bars along the bottom, the tallest a quarter of the panel
            ax.bar((r["bin_low"] + r["bin_high"]) / 2, 0.25 * r["n"] / r["n"].max(), width=1 / n_bins, alpha=0.2,
                   color="C1")
            ax.plot(r["mean_predicted"], r["observed"], marker="o", ms=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name} (n {int(r['n'].sum())})", xlabel="mean predicted",
               ylabel="observed")
    fig.savefig(path, dpi=80)
