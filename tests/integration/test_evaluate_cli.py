"""chexnet evaluate / compare end to end on tiny trained runs (issue 4)."""

from __future__ import annotations

import json
import re

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
    chexnet_main("evaluate", b, "--split", "test", "--bootstrap", "200", "--tta", "hflip")
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
