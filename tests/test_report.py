"""chexnet.report, chexnet.predictions, chexnet.compare: predictions file, evaluation table and outputs, run comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet import compare, predictions, report
from chexnet.labels import PATHOLOGIES
from chexnet.metrics import auroc

SHARED_PUBLISHED = Path(__file__).resolve().parents[2] / "shared/data/published_auroc.csv"


def make_predictions(n=240, seed=0, noise=1.0, images=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(PATHOLOGIES))) < 0.25).astype(np.uint8)
    p = 1 / (1 + np.exp(-(noise * rng.normal(size=y.shape) + 1.5 * y - 1)))
    images = images if images is not None else [f"{i:08d}_000.png" for i in range(n)]
    return predictions.predictions_frame(images, np.arange(n) // 3, p, y)


def test_published_auroc_is_packaged_with_citations():
    df = report.published_auroc()
    assert list(df.index) == list(PATHOLOGIES)
    assert {"chexnet2017", "wang2017"} <= set(df.columns)
    assert df.loc["Atelectasis", "chexnet2017"] == pytest.approx(0.8094)
    assert df.loc["Hernia", "wang2017"] == pytest.approx(0.767)
    assert "Rajpurkar" in df.attrs["citations"]["chexnet2017"]
    assert "ChestX-ray8" in df.attrs["citations"]["wang2017"]
    if SHARED_PUBLISHED.is_file():  # the packaged copy stays in sync with the shared source
        shared = pd.read_csv(SHARED_PUBLISHED, comment="#").set_index("pathology")
        pd.testing.assert_frame_equal(df, shared.reindex(df.index), check_names=False, check_like=True)


def test_predictions_round_trip(tmp_path):
    df = make_predictions(50)
    path = tmp_path / "predictions.csv"
    predictions.write_predictions(df, path)
    back = predictions.read_predictions(path)
    assert list(back.columns) == list(predictions.PREDICTION_COLUMNS)
    images, patients, p, y = predictions.prediction_arrays(back)
    np.testing.assert_array_equal(p, predictions.prediction_arrays(df)[2])  # lossless floats
    np.testing.assert_array_equal(y, predictions.prediction_arrays(df)[3])
    assert images[0] == "00000000_000.png" and patients[5] == 1


def test_read_predictions_errors_name_the_problem(tmp_path):
    df = make_predictions(20)
    df.drop(columns=["prob_Hernia"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match=r"a\.csv.*missing columns \['prob_Hernia'\]"):
        predictions.read_predictions(tmp_path / "a.csv")
    bad = df.copy()
    bad.loc[7, "label_Mass"] = 3
    bad.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match=r"b\.csv.*00000007_000\.png \(row 7\)"):
        predictions.read_predictions(tmp_path / "b.csv")


def test_evaluation_table_na_class_and_means():
    df = make_predictions(300)
    df["label_Hernia"] = 0  # no positives
    df["label_Edema"] = 1  # no negatives
    _, patients, p, y = predictions.prediction_arrays(df)
    val = make_predictions(300, seed=1)
    _, _, p_val, y_val = predictions.prediction_arrays(val)
    table = report.evaluation_table(y, p, patients, y_val, p_val, threshold_method="youden", n_resamples=100)
    assert list(table.index) == [*PATHOLOGIES, "Mean"]
    for name, why in (("Hernia", "no positive"), ("Edema", "no negative")):
        assert table.loc[name, ["auroc", "auroc_ci_low", "auroc_ci_high"]].isna().all()
        assert why in table.loc[name, "note"]
    defined = [n for n in PATHOLOGIES if n not in ("Hernia", "Edema")]
    assert table.loc["Mean", "auroc"] == pytest.approx(table.loc[defined, "auroc"].mean())
    assert table.loc["Mean", "chexnet2017"] == pytest.approx(report.published_auroc().loc[defined, "chexnet2017"].mean())
    assert table.loc["Mean", "auroc_ci_low"] < table.loc["Mean", "auroc"] < table.loc["Mean", "auroc_ci_high"]
    assert table.loc["Atelectasis", "n_pos"] == y[:, 0].sum()
    assert table.loc[defined, ["threshold", "sensitivity", "specificity", "f1"]].notna().all().all()
    assert any("Hernia" in n and "left out" in n for n in table.attrs["notes"])
    assert table.attrs["threshold_method"] == "youden"
    text = report.format_table(table)
    assert "Hernia" in text and "n/a" in text and "AUROC [95% CI]" in text

    no_val = report.evaluation_table(y, p, patients, n_resamples=20)
    assert no_val[["threshold", "sensitivity"]].isna().all().all()
    assert any("No validation predictions" in n for n in no_val.attrs["notes"])


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    df, val = make_predictions(300), make_predictions(300, seed=1)
    df["label_Hernia"] = 0
    table = report.write_evaluation(out, df, val, n_resamples=50, context={"run": "runs/r1", "split": "test"})
    return out, table


def test_write_evaluation_without_plots_writes_the_same_numbers_and_no_figure(evaluation_dir, tmp_path):
    out, _ = evaluation_dir
    df, val = make_predictions(300), make_predictions(300, seed=1)
    df["label_Hernia"] = 0
    report.write_evaluation(tmp_path, df, val, n_resamples=50, context={"run": "runs/r1", "split": "test"},
                            plots=False)
    assert not list(tmp_path.glob("*.png"))
    for name in ("auroc.csv", "calibration.csv", "metrics.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    md = (tmp_path / "report.md").read_text()
    assert ".png" not in md and "## Plots" not in md
    assert md.split("## Notes")[0] == (out / "report.md").read_text().split("## Notes")[0].replace(
        "; reliability diagrams in `reliability.png`.", ".").replace("![Reliability](reliability.png)", "")


def test_write_evaluation_writes_every_output(evaluation_dir):
    out, table = evaluation_dir
    for name in ("metrics.json", "auroc.csv", "report.md", "roc.png", "pr.png", "auroc_vs_published.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("roc.png", "pr.png", "auroc_vs_published.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads((out / "metrics.json").read_text(), parse_constant=no_nan)
    assert data["context"] == {"run": "runs/r1", "split": "test"}
    assert data["settings"]["threshold_method"] == "f1" and data["settings"]["threshold_source"] == "validation"
    assert data["per_pathology"]["Hernia"]["auroc"] is None
    assert data["mean"]["auroc"] == pytest.approx(table.loc["Mean", "auroc"])
    assert set(data["published_sources"]) == {"chexnet2017", "wang2017"}

    csv = pd.read_csv(out / "auroc.csv", index_col="pathology")
    assert list(csv.index) == [*PATHOLOGIES, "Mean"]
    np.testing.assert_allclose(csv["auroc"], table["auroc"].astype(float), atol=1e-6)

    md = (out / "report.md").read_text()
    assert "70/10/20" in md and "official" in md and "maximizes F1" in md
    assert "| **Mean** |" in md and "n/a: no positive cases" in md


def test_write_evaluation_refuses_nan_predictions(tmp_path):
    df = make_predictions(30)
    df.loc[4, "prob_Mass"] = np.nan
    with pytest.raises(ValueError, match=r"00000004_000\.png \(row 4\)"):
        report.write_evaluation(tmp_path, df, n_resamples=10)
    assert not (tmp_path / "metrics.json").exists()


def test_compare_runs_table_text_and_chart(tmp_path):
    a = make_predictions(300, noise=1.0)
    b = a.copy()
    b[list(predictions.PROB_COLUMNS)] = make_predictions(300, seed=5, noise=2.0)[list(predictions.PROB_COLUMNS)] * 0.2 + 0.8 * b[
        list(predictions.PROB_COLUMNS)
    ]
    predictions.write_predictions(a, tmp_path / "a.csv")
    predictions.write_predictions(b.sample(frac=1.0, random_state=0), tmp_path / "b.csv")  # same images, other order
    table, text = compare.compare_runs([("A", tmp_path / "a.csv"), ("B", tmp_path / "b.csv")], out_dir=tmp_path / "cmp")

    _, _, p_a, y = predictions.prediction_arrays(a)
    p_b = predictions.prediction_arrays(b)[2]
    np.testing.assert_allclose(table.loc[list(PATHOLOGIES), "AUROC A"], auroc(y, p_a))
    np.testing.assert_allclose(table.loc[list(PATHOLOGIES), "AUROC B"], auroc(y, p_b))  # aligned by image name
    k = int((table.loc[list(PATHOLOGIES), "delta B"] > 0).sum())
    assert f"B better than A on {k} of 14 pathologies" in text
    assert table.loc[list(PATHOLOGIES), "p B"].between(0, 1).all()
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert "p B" in report.format_table(table)
    # 3 images per patient here: the p-values come from the paired bootstrap over patients, and say so
    assert "paired bootstrap over patients" in text and "paired bootstrap over patients" in table.attrs["method"]
    assert "paired bootstrap over patients" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_refuses_different_image_sets():
    a = make_predictions(60)
    b = make_predictions(60, images=[f"{i:08d}_001.png" for i in range(60)])
    with pytest.raises(ValueError, match="different image sets"):
        compare.compare_runs([("A", a), ("B", b)])
    with pytest.raises(ValueError, match="different image sets"):
        compare.compare_runs([("A", a), ("B", a.iloc[:-1])])
    relabeled = a.copy()
    relabeled.loc[3, "label_Mass"] = 1 - relabeled.loc[3, "label_Mass"]
    with pytest.raises(ValueError, match="different labels"):
        compare.compare_runs([("A", a), ("B", relabeled)])


# --------------------------------------------------------------------------- missing labels (NaN / empty cells)


def predictions_with_missing(n=300, seed=0):
    """Hernia missing in every row (not in this dataset), Mass missing in about a third of the rows."""
    df = make_predictions(n, seed=seed)
    images, patients, p, y = predictions.prediction_arrays(df)
    y = y.astype(np.float64)
    y[:, PATHOLOGIES.index("Hernia")] = np.nan
    y[np.random.default_rng(seed).random(n) < 0.33, PATHOLOGIES.index("Mass")] = np.nan
    return predictions.predictions_frame(images, patients, p, y), y, p


def test_predictions_with_missing_labels_round_trip_as_empty_cells(tmp_path):
    df, y, p = predictions_with_missing(40)
    path = tmp_path / "predictions.csv"
    predictions.write_predictions(df, path)
    header, first = path.read_text().splitlines()[:2]
    assert first.split(",")[header.split(",").index("label_Hernia")] == ""  # an empty cell
    back = predictions.read_predictions(path)
    assert back["label_Hernia"].isna().all() and back["label_Mass"].isna().sum() == np.isnan(y[:, 4]).sum()
    _, _, p_back, y_back = predictions.prediction_arrays(back)
    np.testing.assert_array_equal(y_back, y)  # NaN where missing, 0/1 elsewhere
    np.testing.assert_array_equal(p_back, p)
    assert predictions.prediction_arrays(make_predictions(5))[3].dtype == np.uint8  # nothing missing: as before


def test_write_evaluation_does_not_score_a_label_missing_everywhere(tmp_path):
    df, y, p = predictions_with_missing()
    val, _, _ = predictions_with_missing(300, seed=1)
    table = report.write_evaluation(tmp_path, df, val, n_resamples=50)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=no_nan)
    assert data["labels_not_scored"] == ["Hernia"]
    assert data["per_pathology"]["Hernia"]["auroc"] is None and data["per_pathology"]["Hernia"]["n_pos"] is None
    assert data["per_pathology"]["Hernia"]["note"] == "not in this dataset"

    raw = pd.read_csv(tmp_path / "auroc.csv", index_col="pathology", keep_default_na=False)
    assert raw.loc["Hernia", "auroc"] == "" and raw.loc["Hernia", "auroc_ci_low"] == ""  # empty cells
    assert raw.loc["Hernia", "note"] == "not in this dataset"

    mass = PATHOLOGIES.index("Mass")
    known = ~np.isnan(y[:, mass])
    assert table.loc["Mass", "auroc"] == pytest.approx(auroc(y[known, mass], p[known, mass]), abs=1e-12)
    assert table.loc["Mass", "n_pos"] == y[known, mass].sum()
    assert table.loc["Mass", "prevalence"] == pytest.approx(y[known, mass].mean())
    assert table.loc["Mass", "auroc_ci_low"] < table.loc["Mass", "auroc"] < table.loc["Mass", "auroc_ci_high"]
    assert np.isfinite(table.loc["Mass", ["threshold", "sensitivity", "specificity", "f1"]].astype(float)).all()
    scored = [n for n in PATHOLOGIES if n != "Hernia"]
    assert table.loc["Mean", "auroc"] == pytest.approx(table.loc[scored, "auroc"].mean())
    assert table.loc["Mean", "note"] == "mean over 13 of 14"
    assert any("Not scored" in n and "Hernia" in n for n in table.attrs["notes"])
    assert not any("single class" in n for n in table.attrs["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "not in this dataset" in md
    for name in ("roc.png", "pr.png", "auroc_vs_published.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_runs_reads_missing_labels_back_as_nan(tmp_path):
    a, y, p_a = predictions_with_missing()
    b = a.copy()
    b[list(predictions.PROB_COLUMNS)] = make_predictions(300, seed=5, noise=2.0)[list(predictions.PROB_COLUMNS)] * 0.3 + 0.7 * b[
        list(predictions.PROB_COLUMNS)]
    predictions.write_predictions(a, tmp_path / "a.csv")
    predictions.write_predictions(b.sample(frac=1.0, random_state=0), tmp_path / "b.csv")
    table, text = compare.compare_runs([("A", tmp_path / "a.csv"), ("B", tmp_path / "b.csv")], n_resamples=100)
    mass = PATHOLOGIES.index("Mass")
    known = ~np.isnan(y[:, mass])
    assert table.loc["Mass", "AUROC A"] == pytest.approx(auroc(y[known, mass], p_a[known, mass]), abs=1e-12)
    assert np.isnan(table.loc["Hernia", "AUROC A"]) and np.isnan(table.loc["Hernia", "p B"])
    assert 0 <= table.loc["Mass", "p B"] <= 1
    assert "of 13 pathologies" in text and "not scored" in text and "Hernia" in text


# --------------------------------------------------------------------------- derived labels (chexnet.derived)


def test_a_derived_label_is_scored_by_its_rule_and_marked_as_derived(tmp_path):
    """8 images whose Nodule / Mass probabilities and expert 'Nodule or mass' labels are given: the derived
    AUROC is roc_auc_score over the known rows of max(p_Nodule, p_Mass), 10 of 12 pairs ranked right."""
    from sklearn.metrics import roc_auc_score

    from chexnet.derived import DerivedLabel
    from chexnet.metrics import bootstrap_auroc_ci

    df = make_predictions(8)
    df["prob_Nodule"] = [0.9, 0.1, 0.2, 0.3, 0.6, 0.1, 0.4, 0.05]
    df["prob_Mass"] = [0.1, 0.8, 0.1, 0.2, 0.1, 0.7, 0.3, 0.5]
    nodule_or_mass = np.array([1, 1, 0, 0, np.nan, 0, 1, 0])  # row 4 missing
    opacity = np.array([1, 0, 0, 1, 0, 1, 0, 0], dtype=float)
    rules = [DerivedLabel("Nodule or mass", "max", ("Nodule", "Mass")),
             DerivedLabel("Airspace opacity", "max", ("Consolidation", "Pneumonia", "Infiltration"))]
    table = report.write_evaluation(tmp_path, df, n_resamples=50, thresholds=np.full(len(PATHOLOGIES), 0.5),
                                    derived=rules, derived_y=np.column_stack([nodule_or_mass, opacity]))
    _, patients, p, y = predictions.prediction_arrays(df)
    plain = report.evaluation_table(y, p, patients, n_resamples=50, thresholds=np.full(len(PATHOLOGIES), 0.5))

    score = np.maximum(df["prob_Nodule"], df["prob_Mass"]).to_numpy()
    known = ~np.isnan(nodule_or_mass)
    want = roc_auc_score(nodule_or_mass[known], score[known])
    assert want == pytest.approx(10 / 12)
    assert table.loc["Nodule or mass", "auroc"] == pytest.approx(want, abs=1e-12)
    ci = bootstrap_auroc_ci(nodule_or_mass, score, groups=patients, n_resamples=50, seed=0)  # the same bootstrap
    assert table.loc["Nodule or mass", "auroc_ci_low"] == pytest.approx(ci.low[0])
    assert table.loc["Nodule or mass", "auroc_ci_high"] == pytest.approx(ci.high[0])
    assert table.loc["Nodule or mass", "n_pos"] == 3 and table.loc["Nodule or mass", "prevalence"] == pytest.approx(3 / 7)
    opacity_score = p[:, [PATHOLOGIES.index(n) for n in rules[1].of]].max(axis=1)
    assert table.loc["Airspace opacity", "auroc"] == pytest.approx(roc_auc_score(opacity, opacity_score), abs=1e-12)

    # rows after Mean, in no mean, no operating point, the rule in the note
    assert list(table.index) == [*PATHOLOGIES, "Mean", "Nodule or mass", "Airspace opacity"]
    assert table.loc["Mean", "auroc"] == pytest.approx(plain.loc["Mean", "auroc"], nan_ok=True)
    assert table.loc["Nodule or mass", "note"] == "derived: max(Nodule, Mass)"
    assert table.loc[["Nodule or mass", "Airspace opacity"], ["threshold", "sensitivity", "specificity", "f1",
                                                             "chexnet2017"]].isna().all().all()
    assert table.attrs["derived"] == {"Nodule or mass": "max(Nodule, Mass)",
                                      "Airspace opacity": "max(Consolidation, Pneumonia, Infiltration)"}
    csv = pd.read_csv(tmp_path / "auroc.csv", index_col="pathology")
    assert csv.loc["Nodule or mass", "auroc"] == pytest.approx(want, abs=1e-6)
    assert csv.loc["Nodule or mass", "note"] == "derived: max(Nodule, Mass)"
    data = json.loads((tmp_path / "metrics.json").read_text())
    entry = data["derived_labels"]["Nodule or mass"]
    assert entry["rule"] == "max" and entry["of"] == ["Nodule", "Mass"] and entry["derived"] == "max(Nodule, Mass)"
    assert entry["auroc"] == pytest.approx(want) and entry["n_pos"] == 3 and "threshold" not in entry
    assert "Nodule or mass" not in data["per_pathology"] and "Nodule or mass" not in data["labels_not_scored"]
    assert any("no operating point" in n for n in data["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "## Derived labels (not model outputs)" in md and "| Nodule or mass | 0.429 | 3 | 0.833" in md
    assert "derived: max(Nodule, Mass)" in md and "no threshold" in md
    rows = pd.read_csv(tmp_path / "derived.csv", dtype={"image": str})
    assert list(rows.columns) == ["image", "patient_id", "score_Nodule or mass", "label_Nodule or mass",
                                  "score_Airspace opacity", "label_Airspace opacity"]
    np.testing.assert_array_equal(rows["score_Nodule or mass"], score)
    assert rows["label_Nodule or mass"].isna().tolist() == (~known).tolist()
    text = report.format_table(table).splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith("Nodule or mass"))
    assert set(text[at - 1]) <= {"-", " "} and "derived: max(Nodule, Mass)" in text[at]


def test_without_derived_labels_the_outputs_are_as_before(evaluation_dir):
    out, table = evaluation_dir
    assert table.attrs["derived"] == {} and not (out / "derived.csv").exists()
    assert json.loads((out / "metrics.json").read_text())["derived_labels"] == {}
    assert "Derived labels" not in (out / "report.md").read_text()


# --------------------------------------------------------------------------- a run's own labels (not NIH's 14)

OWN_LABELS = ("Lung Opacity", "Effusion", "Fracture")


def own_label_predictions():
    """12 images of 6 patients, 3 labels in the run's order; Fracture is missing on rows 10 and 11."""
    y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0],
                  [0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, np.nan], [0, 0, np.nan]])
    p = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.6, 0.4, 0.2], [0.2, 0.1, 0.3], [0.4, 0.3, 0.9],
                  [0.5, 0.7, 0.1], [0.1, 0.6, 0.4], [0.8, 0.9, 0.6], [0.35, 0.2, 0.5], [0.7, 0.1, 0.2],
                  [0.2, 0.5, 0.3], [0.45, 0.3, 0.8]])
    images = [f"img{i:02d}.png" for i in range(12)]
    return predictions.predictions_frame(images, np.arange(12) // 2, p, y, names=OWN_LABELS), y, p


def test_a_run_on_its_own_labels_is_scored_per_label_with_published_numbers_only_for_nih(tmp_path):
    """A 3-label run (CheXpert's Lung Opacity, NIH's Effusion, Fracture): AUROC per label is sklearn's on the
    known rows; every output has exactly those labels, in the run's order; only Effusion has published AUROCs.
    A derived label's rule takes its labels' columns of this run (Fracture is column 2, Effusion 1)."""
    from sklearn.metrics import roc_auc_score

    from chexnet.derived import DerivedLabel

    df, y, p = own_label_predictions()
    predictions.write_predictions(df, tmp_path / "predictions.csv")
    back = predictions.read_predictions(tmp_path / "predictions.csv")
    assert list(back.columns) == ["image", "patient_id", *(f"prob_{n}" for n in OWN_LABELS),
                                  *(f"label_{n}" for n in OWN_LABELS)]
    assert predictions.predicted_labels(back) == OWN_LABELS
    val, _, _ = own_label_predictions()
    attrs = pd.DataFrame({"sex": ["M", "F"] * 6, "age": [30] * 12, "view": ["PA"] * 12})
    rule = DerivedLabel("Pleural or bone", "max", ("Fracture", "Effusion"))
    target = np.array([1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0], dtype=float)
    full = report.write_evaluation(tmp_path / "eval", back, val, n_resamples=20, attributes=attrs, derived=[rule],
                                   derived_y=target[:, None])
    table = full.drop(index="Pleural or bone")

    for j, name in enumerate(OWN_LABELS):
        known = ~np.isnan(y[:, j])
        assert table.loc[name, "auroc"] == pytest.approx(roc_auc_score(y[known, j], p[known, j]), abs=1e-12)
    # 33 of 35 (positive, negative) pairs ranked right: the positive at 0.4 is below the negatives at 0.45 and 0.5
    assert table.loc["Lung Opacity", "auroc"] == pytest.approx(33 / 35)
    assert table.loc["Fracture", "n_pos"] == 3 and table.loc["Fracture", "prevalence"] == pytest.approx(0.3)
    assert list(table.index) == [*OWN_LABELS, "Mean"]
    assert table.loc["Effusion", "chexnet2017"] == pytest.approx(0.8638)
    assert table.loc[["Lung Opacity", "Fracture", "Mean"], ["chexnet2017", "wang2017"]].isna().all().all()
    assert table.attrs["labels_without_published"] == ["Lung Opacity", "Fracture"]

    out = tmp_path / "eval"
    assert list(pd.read_csv(out / "auroc.csv", index_col="pathology").index) == [*OWN_LABELS, "Mean",
                                                                                 "Pleural or bone"]
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["per_pathology"]) == list(OWN_LABELS) and data["mean"]["chexnet2017"] is None
    assert any("No published AUROC for Lung Opacity, Fracture" in n for n in data["notes"])
    assert set(data["published_sources"]) == {"chexnet2017", "wang2017"}
    md = (out / "report.md").read_text()
    assert "No published AUROC for Lung Opacity, Fracture" in md and "70/10/20" in md
    sub = pd.read_csv(out / "subgroups.csv")
    assert list(dict.fromkeys(sub["pathology"])) == list(OWN_LABELS)
    from PIL import Image

    for name in ("roc.png", "pr.png", "auroc_vs_published.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out / "roc.png").size == (3 * 4 * 80, 4 * 80)  # one 4-inch panel per label, in one row
    score = p[:, [2, 1]].max(axis=1)
    np.testing.assert_array_equal(pd.read_csv(out / "derived.csv")["score_Pleural or bone"], score)
    assert full.loc["Pleural or bone", "auroc"] == pytest.approx(roc_auc_score(target, score), abs=1e-12)


def test_labels_without_any_published_auroc_show_none_and_say_so(tmp_path):
    df, _, _ = own_label_predictions()
    df = df.drop(columns=["prob_Effusion", "label_Effusion"])
    table = report.write_evaluation(tmp_path, df, n_resamples=10)
    assert list(table.index) == ["Lung Opacity", "Fracture", "Mean"]
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["published_sources"] == {} and not any("70/10/20" in n for n in data["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "CheXNet'17" not in md and "70/10/20" not in md
    assert "- none: no label of this run has a published AUROC" in md
    assert "CheXNet'17" not in report.format_table(table)
    assert (tmp_path / "auroc_vs_published.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_runs_of_different_labels_uses_the_shared_ones_and_names_the_others(tmp_path):
    a, y, p = own_label_predictions()
    images, patients = a["image"].to_numpy(), a["patient_id"].to_numpy()
    b_names = ("Effusion", "Cardiomegaly", "Lung Opacity")  # another order, one label A lacks
    b_y = np.column_stack([y[:, 1], np.zeros(12), y[:, 0]])
    b_p = np.column_stack([p[::-1, 1], np.full(12, 0.5), p[:, 0] ** 2])
    b = predictions.predictions_frame(images, patients, b_p, b_y, names=b_names)
    predictions.write_predictions(b, tmp_path / "b.csv")
    table, text = compare.compare_runs([("A", a), ("B", tmp_path / "b.csv")], out_dir=tmp_path / "cmp",
                                      n_resamples=50)
    assert list(table.index) == ["Lung Opacity", "Effusion", "Mean"]  # shared, in A's order
    np.testing.assert_allclose(table.loc[["Lung Opacity", "Effusion"], "AUROC B"],
                               auroc(y[:, :2], np.column_stack([p[:, 0] ** 2, p[::-1, 1]])))
    assert "left out, not in every run: A's Fracture; B's Cardiomegaly" in text
    assert table.attrs["labels_left_out"] == {"A": ["Fracture"], "B": ["Cardiomegaly"]}
    assert "B better than A on" in text and "of 2 pathologies" in text
    assert "Cardiomegaly" in (tmp_path / "cmp" / "compare.md").read_text()
    with pytest.raises(ValueError, match="share no label"):
        compare.compare_runs([("A", a.drop(columns=["prob_Lung Opacity", "label_Lung Opacity", "prob_Effusion",
                                                   "label_Effusion"])), ("B", b)])
