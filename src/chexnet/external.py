"""External validation across data sets: one run evaluated on several caches, side by side.

``chexnet evaluate RUN --cache A --cache B`` evaluates the run on each cache (each into its own folder, see
:func:`chexnet.evaluate.evaluate_run`) and then writes, into ``RUN/eval/external/``:

``cross_dataset.csv``  one row per (label, data set): AUROC, its patient-bootstrap CI, positives, prevalence
                       (over known values), ``derived`` (the rule of a derived label, e.g. ``max(Nodule, Mass)``;
                       empty for a model output), note; a label a data set lacks (or has no positive or no
                       negative for) has an empty AUROC and the note ``not in this dataset`` (or why it is n/a)
``cross_dataset.md``   the AUROC table (rows: labels, columns: data sets), then per data set: its source, the
                       labels it lacks, its label options (uncertainty / blank policies, readers), the mapping
                       of its names to the model's labels and its derived labels' rules
``cross_dataset.png``  AUROC per label, one bar per data set, with the CIs

A data set is named by its cache folder. Labels are the run's (its model outputs), in its order, then the derived
labels (:mod:`chexnet.derived`) of any data set: scored by a rule over the model's outputs, not outputs
themselves, so marked ``derived: RULE`` in every table and the plot, and left out of the means.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.fileio import atomic_write

NOT_IN_DATASET = "not in this dataset"


def derived_rules(results: dict[str, pd.DataFrame]) -> dict[str, str]:
    """{derived label: its rule as text} over the tables' ``attrs["derived"]`` (:func:`chexnet.report.with_derived`),
    in order of first appearance."""
    out: dict[str, str] = {}
    for table in results.values():
        for label, rule in (table.attrs.get("derived") or {}).items():
            out.setdefault(label, rule)
    return out


def cross_dataset_table(results: dict[str, pd.DataFrame], labels) -> pd.DataFrame:
    """Long table from ``{dataset: evaluation table}`` (:func:`chexnet.report.write_evaluation`'s, indexed by
    label): columns dataset, label, auroc, auroc_ci_low, auroc_ci_high, n_pos, prevalence, derived, note. Rows:
    ``labels`` (the model's), then the derived labels of any table (:func:`derived_rules`), whose ``derived``
    is their rule and whose note, where scored, is the table's (``derived: RULE``)."""
    rules = derived_rules(results)
    rows = []
    for name, table in results.items():
        for label in [*labels, *(r for r in rules if r not in labels)]:
            row = table.loc[label] if label in table.index else None
            auroc = float(row["auroc"]) if row is not None and pd.notna(row["auroc"]) else math.nan
            rows.append({
                "dataset": name, "label": label, "auroc": auroc,
                "auroc_ci_low": float(row["auroc_ci_low"]) if row is not None and pd.notna(row["auroc_ci_low"]) else math.nan,
                "auroc_ci_high": float(row["auroc_ci_high"]) if row is not None and pd.notna(row["auroc_ci_high"]) else math.nan,
                "n_pos": int(row["n_pos"]) if row is not None and pd.notna(row["n_pos"]) else pd.NA,
                "prevalence": float(row["prevalence"]) if row is not None and pd.notna(row["prevalence"]) else math.nan,
                "derived": rules.get(label, ""),
                "note": _note(row, auroc, label in rules),
            })
    out = pd.DataFrame(rows)
    out["n_pos"] = out["n_pos"].astype("Int64")
    return out


def _note(row, auroc: float, derived: bool) -> str:
    """A long row's note: none for a scored model output, the table's for a scored derived label (``derived:
    RULE``) and for an n/a one; ``not in this dataset`` where the table has no such row or note."""
    note = str(row.get("note", "")) if row is not None else ""
    if math.isfinite(auroc) and not derived:
        return ""
    return note or NOT_IN_DATASET


def _shown(label: str, rule: str) -> str:
    """A label as the tables and the plot name it: a derived one with its rule."""
    return f"{label} (derived: {rule})" if rule else label


def _cell(r) -> str:
    if not math.isfinite(r["auroc"]):
        return "n/a"
    ci = (f" [{r['auroc_ci_low']:.3f}, {r['auroc_ci_high']:.3f}]"
          if math.isfinite(r["auroc_ci_low"]) and math.isfinite(r["auroc_ci_high"]) else "")
    return f"{r['auroc']:.3f}{ci}"


def cross_dataset_markdown(long: pd.DataFrame, about: dict[str, dict]) -> str:
    """The report: AUROC [95% CI] per label and data set, then what each data set is and lacks."""
    names = list(dict.fromkeys(long["dataset"]))
    labels = list(dict.fromkeys(long["label"]))
    rules = dict(zip(long["label"], long["derived"]))
    lines = ["# External validation across data sets", "",
             "AUROC [95% patient-bootstrap CI] per label; n/a: the data set lacks the label, or has no positive or "
             "no negative for it (never scored).", ""]
    if any(rules.values()):
        lines += ["A label marked *derived* is not a model output: the data set's label scored by the rule its cache "
                  "records over the model's probabilities (e.g. `max(Nodule, Mass)`: the higher of the two); AUROC "
                  "only, left out of the means.", ""]
    lines += ["| label | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    cells = {(r["dataset"], r["label"]): r for _, r in long.iterrows()}
    for label in labels:
        lines.append(f"| {_shown(label, rules[label])} | " + " | ".join(_cell(cells[(n, label)]) for n in names)
                     + " |")
    model = long["derived"] == ""
    means = {n: long.loc[(long["dataset"] == n) & model & np.isfinite(long["auroc"]), "auroc"] for n in names}
    lines.append("| mean over scored model labels | " + " | ".join(
        f"{m.mean():.3f} ({len(m)})" if len(m) else "n/a" for m in means.values()) + " |")
    for name in names:
        info = about.get(name, {})
        part = long[long["dataset"] == name]
        lacking = part.loc[part["note"] == NOT_IN_DATASET, "label"].tolist()
        unscorable = part.loc[(part["note"] != NOT_IN_DATASET) & ~np.isfinite(part["auroc"]), "label"].tolist()
        lines += ["", f"## {name}", "",
                  f"- cache: {info.get('cache', '')}",
                  f"- source: {info.get('dataset', 'nih')}; options: {json.dumps(info.get('options') or {})}",
                  f"- test images: {info.get('images', '')}",
                  f"- not in this dataset: {', '.join(lacking) if lacking else 'none'}",
                  f"- not scorable here (no positive or no negative): {', '.join(unscorable) if unscorable else 'none'}"]
        if info.get("mapping"):
            lines.append(f"- label mapping (source name -> model label): {json.dumps(info['mapping'])}")
        if info.get("derived"):
            lines.append("- derived labels (scored by a rule over the model's outputs, not model outputs): "
                         + "; ".join(f"{label} = {rule}" for label, rule in info["derived"].items()))
    return "\n".join(lines) + "\n"


def plot_cross_dataset(long: pd.DataFrame, path) -> None:
    """Grouped bars: AUROC per label, one bar (with its CI) per data set; unscored labels have no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(long["dataset"]))
    labels = list(dict.fromkeys(long["label"]))
    rules = dict(zip(long["label"], long["derived"]))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(labels) * max(1, len(names)) / 2 + 4), 4.5))
    x = np.arange(len(labels))
    for i, name in enumerate(names):
        part = long[long["dataset"] == name].set_index("label").loc[labels]
        auc = part["auroc"].to_numpy(float)
        err = np.vstack([auc - part["auroc_ci_low"].to_numpy(float), part["auroc_ci_high"].to_numpy(float) - auc])
        where = x + (i - (len(names) - 1) / 2) * width
        ax.bar(where, np.nan_to_num(auc), width, yerr=np.where(np.isfinite(err), err, 0), capsize=2, label=name)
        for xi in where[~np.isfinite(auc)]:  # not scored: said, not drawn as 0
            ax.text(xi, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set(xticks=x, ylim=(0, 1.05), ylabel="AUROC", title="External validation: AUROC per data set")
    ax.set_xticklabels([_shown(label, rules[label]) for label in labels], rotation=45, ha="right")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_cross_dataset(out_dir: Path, results: dict[str, pd.DataFrame], about: dict[str, dict], labels) -> Path:
    """``cross_dataset.csv``, ``.md`` and ``.png`` in ``out_dir``; returns the CSV's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    long = cross_dataset_table(results, labels)
    atomic_write(out_dir / "cross_dataset.csv", long.to_csv(index=False, float_format="%.6f"))
    atomic_write(out_dir / "cross_dataset.md", cross_dataset_markdown(long, about))
    plot_cross_dataset(long, out_dir / "cross_dataset.png")
    return out_dir / "cross_dataset.csv"


def format_cross_dataset(long: pd.DataFrame) -> str:
    """The AUROC table as text, for the terminal (rows: labels, a derived one with its rule; columns: data sets)."""
    wide = long.pivot(index="label", columns="dataset", values="auroc")
    wide = wide.loc[list(dict.fromkeys(long["label"])), list(dict.fromkeys(long["dataset"]))]
    rules = dict(zip(long["label"], long["derived"]))
    wide.index = [_shown(label, rules[label]) for label in wide.index]
    return wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="n/a")
