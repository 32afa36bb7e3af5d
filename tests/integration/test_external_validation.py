"""Missing labels end to end: training on CheXpert (uncertain labels missing) masks them out of the loss; a
NIH-trained run evaluated on a CheXpert cache scores the labels CheXpert has and reports the others as not in
this dataset, never as a number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from chexnet.labels import PATHOLOGIES
from tests.helpers import CHEXPERT_CSV, make_chexpert_folder

pytestmark = pytest.mark.skipif(not CHEXPERT_CSV.is_file(), reason=f"{CHEXPERT_CSV} not found (the shared data)")

NOT_IN_CHEXPERT = ["Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]


@pytest.fixture(scope="module")
def chexpert_cache(tmp_path_factory):
    from chexnet.data.prepare import prepare

    root = tmp_path_factory.mktemp("chexpert")
    make_chexpert_folder(root / "data", size=64)
    prepare(root / "data", root / "chexpert-48", size=48, workers=1, progress=False, dataset="chexpert",
            options={"uncertain": "ignore", "blank": "missing"})
    return root / "chexpert-48"


def test_training_masks_missing_labels_out_of_the_loss(chexpert_cache, tiny_cfg, tmp_path):
    from chexnet import train as T
    from chexnet.data.cache import load_cache
    from chexnet.runlog import read_metrics

    labels = ("Atelectasis", "Effusion", "Edema", "Lung Opacity", "Support Devices")
    _, index, _ = load_cache(chexpert_cache)
    assert index.loc[index["split"] == "train", list(labels)].isna().any().all()  # every label has missing values
    T.train(tiny_cfg(labels=labels, loss_weighting="balanced"), chexpert_cache, tmp_path / "run", progress=False)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch"]
    assert math.isfinite(epochs[0]["train_loss"]) and math.isfinite(epochs[0]["val_loss"])
    assert set(epochs[0]["auroc"]) == set(labels)


def test_an_nih_run_on_a_chexpert_cache_scores_only_the_labels_chexpert_has(trained_run, copy_run, chexpert_cache,
                                                                            chexnet_main):
    from chexnet.data.cache import load_cache

    run = copy_run(trained_run)
    chexnet_main("evaluate", run, "--bootstrap", "20", "--no-plots")  # its own test split: thresholds chosen on its val split
    own = (run / "eval" / "test" / "metrics.json").read_bytes()
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    proc = chexnet_main("evaluate", run, "--cache", chexpert_cache, "--bootstrap", "20", "--no-plots")
    assert "not in this dataset, not scored" in proc.stderr and "Hernia" in proc.stderr
    out = run / "eval" / "external" / "chexpert-48"  # never over the run's own eval/test
    assert (run / "eval" / "test" / "metrics.json").read_bytes() == own
    assert json.loads((run / "thresholds.json").read_text())["thresholds"] == thresholds
    assert not (out / "val").exists(), "another data set keeps the run's operating points: no val pass"
    assert "external: chexpert cache" in (out / "test" / "report.md").read_text()
    assert json.loads((out / "test" / "metrics.json").read_text())["settings"]["threshold_source"] == "run"
    used = pd.read_csv(out / "test" / "auroc.csv", index_col=0)["threshold"]
    for name in PATHOLOGIES:
        want = thresholds[name]
        # auroc.csv holds 6 decimals (report.py's float_format "%.6f"): equal to within half its last digit
        assert (want is None and math.isnan(used[name])) or used[name] == pytest.approx(want, rel=0, abs=5.1e-7)
    _, index, _ = load_cache(chexpert_cache)
    test = index[index["split"] == "test"]
    never_known = [n for n in PATHOLOGIES if n in test.columns and test[n].isna().all()]  # blank=missing: Pneumonia
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert sorted(metrics["labels_not_scored"]) == sorted(NOT_IN_CHEXPERT + never_known)
    table = pd.read_csv(out / "test" / "auroc.csv", index_col=0)
    assert table.loc[NOT_IN_CHEXPERT + never_known, "auroc"].isna().all()
    both = [n for n in PATHOLOGIES if n in test.columns and {0, 1} <= set(test[n].dropna())]
    assert both and table.loc[both, "auroc"].notna().all()  # scored wherever the known rows have both classes
    predictions = (out / "test" / "predictions.csv").read_text().splitlines()
    header = predictions[0].split(",")
    assert predictions[1].split(",")[header.index("label_Hernia")] == ""  # missing, not 0


def test_evaluate_on_several_caches_writes_the_cross_dataset_table(trained_run, copy_run, tiny_cache, chexpert_cache,
                                                                   chexnet_main):
    """--cache twice: the run's own data and CheXpert's, each evaluated, then one table per label and data set."""
    run = copy_run(trained_run)
    proc = chexnet_main("evaluate", run, "--cache", tiny_cache, "--cache", chexpert_cache, "--bootstrap", "20",
                        "--no-plots")
    assert "across 2 data sets" in proc.stdout
    assert (run / "eval" / "test" / "metrics.json").is_file()  # the run's own cache: its usual folder
    assert (run / "eval" / "external" / "chexpert-48" / "test" / "metrics.json").is_file()
    long = pd.read_csv(run / "eval" / "external" / "cross_dataset.csv", keep_default_na=False, na_values=[""])
    assert set(long["dataset"]) == {tiny_cache.name, "chexpert-48"} and len(long) == 2 * len(PATHOLOGIES)
    chex = long[long["dataset"] == "chexpert-48"].set_index("label")
    assert chex.loc[NOT_IN_CHEXPERT, "auroc"].isna().all()
    assert (chex.loc[NOT_IN_CHEXPERT, "note"] == "not in this dataset").all()
    own = long[long["dataset"] == tiny_cache.name].set_index("label")
    per_run = pd.read_csv(run / "eval" / "test" / "auroc.csv", index_col=0)
    for label in PATHOLOGIES:  # the table repeats each evaluation's numbers
        a, b = own.loc[label, "auroc"], per_run.loc[label, "auroc"]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)
    md = (run / "eval" / "external" / "cross_dataset.md").read_text()
    assert "| label | " in md and "## chexpert-48" in md and "not in this dataset: " in md and '"uncertain": "ignore"' in md
    assert (run / "eval" / "external" / "cross_dataset.png").stat().st_size > 0


def test_an_external_split_that_shares_images_with_training_is_refused(trained_run, copy_run, tiny_cache, tmp_path,
                                                                       chexnet_main):
    """NIH's expert labels cover NIH images: a run trained on NIH must not be scored on its own training images."""
    from chexnet.data.cache import load_cache
    from chexnet.data.prepare import prepare
    from tests.test_nih_google import write_expert_csv

    _, index, meta = load_cache(tiny_cache)
    data = Path(meta["arguments"]["data_dir"])
    seen = index[index["split"] == "train"].head(3)
    rows = {r.image: (r.patient_id, "40", "M", "PA", "NO", "YES", "NO", "NO") for r in seen.itertuples()}
    expert = write_expert_csv(tmp_path / "expert_test.csv", rows)
    prepare(data, tmp_path / "nih-expert", size=48, workers=1, progress=False, dataset="nih-google",
            options={"expert_labels": f"{expert}:test"})
    run = copy_run(trained_run)
    proc = chexnet_main("evaluate", run, "--cache", tmp_path / "nih-expert", "--bootstrap", "20", check=False)
    assert proc.returncode == 2 and "shares 3 image(s)" in proc.stderr and "--allow-overlap" in proc.stderr
    assert not (run / "eval" / "external").exists()
    proc = chexnet_main("evaluate", run, "--cache", tmp_path / "nih-expert", "--bootstrap", "20", "--allow-overlap", "--no-plots")
    report = (run / "eval" / "external" / "nih-expert" / "test" / "report.md").read_text()
    assert "shares 3 image(s)" in report and "(allowed)" in report
