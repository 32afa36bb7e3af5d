"""chexnet evaluate / compare end to end on tiny trained runs (issue 4)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.labels import PATHOLOGIES

OUTPUTS = ("predictions.csv", "metrics.json", "auroc.csv", "report.md", "roc.png", "pr.png", "auroc_vs_published.png")


@pytest.fixture(scope="module")
def second_run(tiny_cache, tmp_path_factory):
    """Another tiny run (other seed): a model to compare against the session's trained_run."""

    from tests.helpers import TINY, torch_threads
    from chexnet.config import TrainConfig, apply_overrides
    from chexnet.train import train

    run = tmp_path_factory.mktemp("second") / "run_b"
    with torch_threads(1):
        train(apply_overrides(TrainConfig(), {**TINY, "seed": 1}, "test"), tiny_cache, run, progress=False)
    return run


@pytest.mark.slow
def test_evaluate_test_split_then_compare(trained_run, second_run, copy_run, chexnet_main):
    a = copy_run(trained_run, "run_a")
    out = chexnet_main("evaluate", a, "--split", "test", "--bootstrap", "200").stdout
    for name in PATHOLOGIES:
        assert name in out
    for f in OUTPUTS:
        assert (a / "eval" / "test" / f).stat().st_size > 0, f
    # thresholds are chosen on validation: its predictions are written too, never test's
    assert (a / "eval" / "val" / "predictions.csv").is_file()
    metrics = json.loads((a / "eval" / "test" / "metrics.json").read_text())
    assert metrics["settings"]["n_resamples"] == 200
    assert metrics["context"]["split"] == "test"
    preds = pd.read_csv(a / "eval" / "test" / "predictions.csv")
    assert list(preds.columns[:2]) == ["image", "patient_id"] and len(preds.columns) == 2 + 2 * len(PATHOLOGIES)

    b = copy_run(second_run, "run_b")
    chexnet_main("evaluate", b, "--split", "test", "--bootstrap", "200", "--tta", "hflip", "--no-plots")
    proc = chexnet_main("compare", a, b, "--split", "test", "--resamples", "200")
    # "k of N": N is 14 less the pathologies with no positive (or no negative) test case in this tiny split
    assert re.search(r"run_b better than run_a on \d+ of \d+ pathologies", proc.stdout), proc.stdout
    assert (b / "eval" / "test" / "compare" / "compare.png").stat().st_size > 0


def test_compare_needs_evaluated_runs(trained_run, copy_run, chexnet_main):
    a, b = copy_run(trained_run, "a"), copy_run(trained_run, "b")
    proc = chexnet_main("compare", a, b, check=False)
    assert proc.returncode == 2 and "chexnet evaluate" in proc.stderr


def test_evaluate_without_checkpoint_is_a_clear_error(trained_run, copy_run, chexnet_main):
    run = copy_run(trained_run)
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    proc = chexnet_main("evaluate", run, check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_an_nih_run_on_nih_expert_labels_scores_the_derived_findings(trained_run, copy_run, tiny_cache, tmp_path,
                                                                     chexnet_main):
    """Google's expert labels on the NIH test images the run never saw: Pneumothorax is the model's own output,
    Nodule or mass and Airspace opacity are derived (the max of the model's Nodule and Mass, and of Consolidation,
    Pneumonia and Infiltration), marked so, AUROC only; alongside the run's own test split in one command."""
    from sklearn.metrics import roc_auc_score

    from chexnet.data.cache import load_cache
    from chexnet.data.prepare import prepare
    from tests.test_nih_google import write_expert_csv

    _, index, meta = load_cache(tiny_cache)
    test = index[index["split"] == "test"]
    assert len(test) >= 4
    # (patient, age, sex, view, Fracture, Pneumothorax, Airspace opacity, Nodule or mass); one Nodule or mass blank
    rows = {r.image: (r.patient_id, "40", "M", "PA", "NO", "YES" if i % 3 == 0 else "NO", "YES" if i % 2 else "NO",
                      "" if i == 1 else "YES" if i % 2 == 0 else "NO") for i, r in enumerate(test.itertuples())}
    expert = write_expert_csv(tmp_path / "expert_test.csv", rows)
    prepare(Path(meta["arguments"]["data_dir"]), tmp_path / "nih-expert", size=48, workers=1, progress=False,
            dataset="nih-google", options={"expert_labels": f"{expert}:test"})
    run = copy_run(trained_run)
    proc = chexnet_main("evaluate", run, "--cache", tiny_cache, "--cache", tmp_path / "nih-expert", "--bootstrap", "20",
                        "--no-plots")

    out = run / "eval" / "external" / "nih-expert" / "test"
    preds = pd.read_csv(out / "predictions.csv", dtype={"image": str})
    _, expert_index, _ = load_cache(tmp_path / "nih-expert")
    truth = expert_index.set_index("image").loc[preds["image"]]
    table = pd.read_csv(out / "auroc.csv", index_col=0, keep_default_na=False, na_values=[""])
    for label, of in (("Nodule or mass", ["Nodule", "Mass"]),
                      ("Airspace opacity", ["Consolidation", "Pneumonia", "Infiltration"])):
        y = truth[label].to_numpy(float)
        score = preds[[f"prob_{n}" for n in of]].max(axis=1).to_numpy()
        known = ~np.isnan(y)
        assert table.loc[label, "auroc"] == pytest.approx(roc_auc_score(y[known], score[known]), abs=1e-6)
        assert table.loc[label, "note"] == f"derived: max({', '.join(of)})"
        assert math.isnan(table.loc[label, "threshold"]) and math.isnan(table.loc[label, "sensitivity"])
    y = truth["Pneumothorax"].to_numpy(float)  # one to one: the model's own output, its own threshold
    assert table.loc["Pneumothorax", "auroc"] == pytest.approx(roc_auc_score(y, preds["prob_Pneumothorax"]), abs=1e-6)
    assert list(table.index[-3:]) == ["Mean", "Nodule or mass", "Airspace opacity"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["derived_labels"]["Nodule or mass"]["derived"] == "max(Nodule, Mass)"
    assert "Nodule or mass" not in metrics["per_pathology"]
    assert not (run / "eval" / "test" / "derived.csv").exists()  # the run's own cache records no rule
    # the tiny run's outputs hardly vary (its AUROCs are 0.5): what is checked here is that every image gets the
    # rule over its own probabilities and its own expert label; tests/test_report.py checks the numbers
    scored = pd.read_csv(out / "derived.csv", dtype={"image": str})
    assert scored["image"].tolist() == preds["image"].tolist()
    np.testing.assert_array_equal(scored["score_Nodule or mass"], preds[["prob_Nodule", "prob_Mass"]].max(axis=1))
    np.testing.assert_array_equal(scored["label_Nodule or mass"], truth["Nodule or mass"].to_numpy(float))
    assert scored["label_Nodule or mass"].isna().sum() == 1
    report = (out / "report.md").read_text()
    assert "- derived labels: Nodule or mass = max(Nodule, Mass) (not a model output)" in report
    assert "## Derived labels (not model outputs)" in report

    long = pd.read_csv(run / "eval" / "external" / "cross_dataset.csv", keep_default_na=False, na_values=[""])
    assert len(long) == 2 * (len(PATHOLOGIES) + 2)
    cell = long[(long["dataset"] == "nih-expert") & (long["label"] == "Nodule or mass")].iloc[0]
    assert cell["derived"] == "max(Nodule, Mass)" and cell["note"] == "derived: max(Nodule, Mass)"
    assert cell["auroc"] == pytest.approx(table.loc["Nodule or mass", "auroc"], abs=1e-6)
    own = long[(long["dataset"] == tiny_cache.name) & (long["label"] == "Nodule or mass")].iloc[0]
    assert math.isnan(own["auroc"]) and own["note"] == "not in this dataset"
    md = (run / "eval" / "external" / "cross_dataset.md").read_text()
    assert "| Nodule or mass (derived: max(Nodule, Mass)) |" in md and "mean over scored model labels" in md
    assert "derived labels (scored by a rule over the model's outputs, not model outputs): Nodule or mass" in md
    assert "Nodule or mass (derived: max(Nodule, Mass))" in proc.stdout


def test_a_run_on_a_subset_of_labels_is_evaluated_and_compared_on_its_own_labels(tiny_cache, tiny_cfg, trained_run,
                                                                                  copy_run, tmp_path, chexnet_main):
    """A run trained on 3 of NIH's labels, not in NIH's order: evaluate (and the cross-dataset table) cover exactly
    those, in the run's order, AUROC as sklearn's on its predictions; compare with an NIH-14 run uses the 3 shared
    labels and names the others."""
    from sklearn.metrics import roc_auc_score

    from chexnet.evaluate import evaluate_across
    from chexnet.train import train

    labels = ["Effusion", "Cardiomegaly", "Pneumothorax"]
    run = tmp_path / "subset"
    train(tiny_cfg(labels=labels), tiny_cache, run, progress=False)
    long = evaluate_across(run, [tiny_cache], n_resamples=20)

    out = run / "eval" / "test"
    for f in (*OUTPUTS, "subgroups.csv"):
        assert (out / f).stat().st_size > 0, f
    preds = pd.read_csv(out / "predictions.csv", dtype={"image": str})
    assert list(preds.columns) == ["image", "patient_id", *(f"prob_{n}" for n in labels),
                                   *(f"label_{n}" for n in labels)]
    assert list(pd.read_csv(run / "eval" / "val" / "predictions.csv").columns) == list(preds.columns)
    table = pd.read_csv(out / "auroc.csv", index_col=0)
    assert list(table.index) == [*labels, "Mean"]
    for name in labels:
        y, p = preds[f"label_{name}"].to_numpy(), preds[f"prob_{name}"].to_numpy()
        if 0 < y.sum() < len(y):
            assert table.loc[name, "auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert table.loc["Effusion", "chexnet2017"] == pytest.approx(0.8638)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_pathology"]) == labels
    assert list(dict.fromkeys(pd.read_csv(out / "subgroups.csv")["pathology"])) == labels
    assert list(json.loads((run / "thresholds.json").read_text())["thresholds"]) == labels
    assert list(dict.fromkeys(long["label"])) == labels
    assert (run / "eval" / "external" / "cross_dataset.png").stat().st_size > 0

    nih = copy_run(trained_run, "nih")
    chexnet_main("evaluate", nih, "--bootstrap", "20", "--no-plots")
    proc = chexnet_main("compare", run, nih, "--resamples", "50")
    left = ", ".join(n for n in PATHOLOGIES if n not in labels)
    assert f"compared on the 3 labels every run has; left out, not in every run: nih's {left}." in proc.stdout
    compared = pd.read_csv(nih / "eval" / "test" / "compare" / "compare.csv", index_col=0)
    assert list(compared.index) == [*labels, "Mean"]
