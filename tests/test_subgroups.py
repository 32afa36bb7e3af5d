"""Subgroup AUROC (sex, age band, view) with patient-bootstrap CIs, blank where a cell has < 5 positives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chexnet import predictions, report, subgroups
from chexnet.labels import PATHOLOGIES
from chexnet.metrics import auroc


def test_age_bands():
    ages = [0, 20, 20.5, 21, 40, 41, 60, 61, 80, 81, 95, np.nan, -1, 412]
    assert list(subgroups.age_band(ages)) == ["0-20", "0-20", "21-40", "21-40", "21-40", "41-60", "41-60", "61-80",
                                              "61-80", "81+", "81+", "", "", ""]


def data(n=900, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(PATHOLOGIES))) < 0.2).astype(np.uint8)
    y[:, -1] = 0
    y[:3, -1] = 1  # Hernia: 3 positives in all, too few for any cell
    p = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 1)))
    patients = np.arange(n) // 3
    attrs = pd.DataFrame({"sex": np.where(patients % 2, "M", "F"), "age": (patients * 7) % 100,
                          "view": np.where(rng.random(n) < 0.6, "PA", "AP")})
    return y, p, patients, attrs


def test_subgroup_table_counts_aurocs_and_blanks():
    y, p, patients, attrs = data()
    table = subgroups.subgroup_table(y, p, patients, attrs, n_resamples=100)
    assert list(table.columns) == subgroups.COLUMNS
    assert len(table) == 9 * len(PATHOLOGIES)  # 2 sexes + 5 age bands + 2 views
    male = (attrs["sex"] == "M").to_numpy()
    row = table[(table.group == "sex") & (table.subgroup == "M") & (table.pathology == "Effusion")].iloc[0]
    c = PATHOLOGIES.index("Effusion")
    assert row.n == male.sum() and row.n_pos == y[male, c].sum()
    assert row.auroc == pytest.approx(auroc(y[male, c], p[male, c]))
    assert row.auroc_ci_low < row.auroc < row.auroc_ci_high
    hernia = table[table.pathology == "Hernia"]
    assert hernia["auroc"].isna().all() and hernia["auroc_ci_low"].isna().all()  # < 5 positives: blank
    old = table[(table.group == "age") & (table.subgroup == "81+")].iloc[0]
    assert old.n == (subgroups.age_band(attrs["age"]) == "81+").sum()


def test_write_evaluation_writes_subgroups_csv_and_a_report_section(tmp_path):
    y, p, patients, attrs = data(300, seed=1)
    frame = predictions.predictions_frame([f"{i:08d}_000.png" for i in range(len(y))], patients, p, y)
    report.write_evaluation(tmp_path, frame, n_resamples=50, attributes=attrs)
    sub = pd.read_csv(tmp_path / "subgroups.csv")
    assert list(sub.columns) == subgroups.COLUMNS and set(sub.group) == {"sex", "age", "view"}
    text = (tmp_path / "report.md").read_text()
    assert "## Subgroups" in text and "view AP" in text and "age 81+" in text and "sex F" in text


def test_subgroup_table_with_missing_labels_uses_the_known_rows():
    y, p, patients, attrs = data()
    y = y.astype(np.float64)
    c = PATHOLOGIES.index("Effusion")
    y[np.random.default_rng(2).random(len(y)) < 0.3, c] = np.nan
    y[:, PATHOLOGIES.index("Mass")] = np.nan  # not in this dataset
    table = subgroups.subgroup_table(y, p, patients, attrs, n_resamples=50)
    male = (attrs["sex"] == "M").to_numpy()
    rows = male & ~np.isnan(y[:, c])
    row = table[(table.group == "sex") & (table.subgroup == "M") & (table.pathology == "Effusion")].iloc[0]
    assert row.n == male.sum() and row.n_pos == y[rows, c].sum()
    assert row.auroc == pytest.approx(auroc(y[rows, c], p[rows, c]))
    assert row.auroc_ci_low < row.auroc < row.auroc_ci_high
    mass = table[table.pathology == "Mass"]
    assert (mass["n_pos"] == 0).all() and mass["auroc"].isna().all() and mass["auroc_ci_low"].isna().all()
    assert "Mass" in subgroups.subgroup_markdown(table)
