"""chexnet card: every number in model_card.json is the evaluation's own, and without the facts only a person can
give the card is written with them marked missing and the command fails naming them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

FACTS = """\
intended_use: A test of the model card, on synthetic images.
out_of_scope_uses: Any use on patients.
limitations: Trained for three steps on 96 synthetic images.
ethical_considerations: None beyond the above; no patient data was used.
owners: [chexnet tests]
"""


def test_the_card_copies_the_evaluation_and_needs_a_person_s_facts(trained_run, copy_run, tmp_path, chexnet_main):
    from chexnet.evaluate import evaluate_run

    run = copy_run(trained_run)
    evaluate_run(run, "best", "test", "none", batch_size=8, n_resamples=10, plots=False)
    proc = chexnet_main("card", run, check=False)
    assert proc.returncode == 2 and "intended_use, out_of_scope_uses, limitations, ethical_considerations" in proc.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert card["considerations"]["intended_use"].startswith("MISSING")
    assert "MISSING" in (run / "MODEL_CARD.md").read_text()

    (tmp_path / "card.yaml").write_text(FACTS)
    chexnet_main("card", run, "--facts", tmp_path / "card.yaml")
    card = json.loads((run / "model_card.json").read_text())
    text = (run / "MODEL_CARD.md").read_text()
    assert text.startswith("---\n") and "Any use on patients." in text and "## Quantitative analysis" in text
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    by = {(m["type"], m["label"], m.get("slice"), m.get("operating_point")): m
          for m in card["quantitative_analysis"]["performance_metrics"]}
    for label, row in metrics["per_pathology"].items():  # the AUROCs and CIs are metrics.json's
        m = by[("auroc", label, None, None)]
        assert m["value"] == row["auroc"] and m["confidence_interval"]["lower_bound"] == row["auroc_ci_low"]
    cal = pd.read_csv(run / "eval" / "test" / "calibration.csv", index_col=0)
    for label, row in cal.iterrows():
        for metric in ("ece", "brier", "slope"):
            got = by[(metric, label, None, None)]["value"]
            assert (got is None and pd.isna(row[metric])) or got == pytest.approx(row[metric], abs=1e-6)
    ops = pd.read_csv(run / "eval" / "test" / "operating_points.csv", index_col=0)
    first = ops.iloc[0]
    got = by[("sensitivity", ops.index[0], None, first["rule"])]["value"]
    assert (got is None and pd.isna(first["sensitivity"])) or got == pytest.approx(first["sensitivity"], abs=1e-6)
    data = card["model_parameters"]["data"]
    assert data["demographics"]["test"]["images"] == metrics["settings"]["n_images"]
    assert card["model_details"]["checkpoint"]["sha256"] == json.loads((run / "run.json").read_text())[
        "checkpoints"]["best.pt"]["sha256"][0]
    assert card["model_parameters"]["hyperparameters"]["arch"] == "mobilenet_v3_small"
