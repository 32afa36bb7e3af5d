"""chexnet tune (issue 10): trials are normal runs, pruning from the training loop, resumable and shared studies,
failed trials, search-space errors; and the training loop's epoch callback that pruning stands on.

Every trial is the tiny config (see tests/conftest.py: 32 px, 3 steps per epoch). Deterministic pruning and failures use trials
enqueued in the study's storage before ``chexnet tune`` runs (Optuna runs enqueued trials first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import chexnet.train as T
from chexnet import cli
from chexnet.checkpoint import load_checkpoint
from chexnet.config import config_from_dict
from chexnet.runlog import read_metrics
from tests.helpers import TINY, subprocess_env, torch_threads

pytestmark = pytest.mark.timeout(300)
needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="optuna is not installed (pip install 'chexnet[tune]')")

SPACE = """\
optimizer: {type: categorical, choices: [adam, sgd]}
lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def tune_args(cache, study, space, trials, *extra, epochs=1) -> list[str]:
    """``chexnet tune`` over the tiny config (every TINY field but epochs as --set)."""
    sets = [a for k, v in TINY.items() if k != "epochs" for a in ("--set", f"{k}={v}")]
    return ["tune", "--cache", str(cache), "--out", str(study), "--space", str(space), "--trials", str(trials),
            "--epochs", str(epochs), "--no-progress", *sets, *map(str, extra)]


def write_space(path: Path, text: str = SPACE) -> Path:
    path.write_text(text)
    return path


def storage(study: Path) -> str:
    return f"sqlite:///{study.resolve() / 'study.db'}"


def load(study: Path):
    import optuna

    return optuna.load_study(study_name=study.name, storage=storage(study))


def new_study(study: Path, direction: str = "minimize"):
    """Create the study ``chexnet tune --out study`` will use, to enqueue trials into it."""
    import optuna

    study.mkdir(parents=True)
    return optuna.create_study(study_name=study.name, storage=storage(study), direction=direction)


def states(study: Path) -> list[str]:
    return [t.state.name for t in load(study).trials]


# ------------------------------------------------------------------------------------------ the training hook


def test_epoch_callback_stops_training_after_that_epoch_with_checkpoints_intact(tiny_cache, tiny_cfg, tmp_path):
    seen = []

    def stop_at_2(record):
        seen.append(record)
        return record["epoch"] == 2

    cfg = tiny_cfg(epochs=3)
    summary = T.train(cfg, tiny_cache, tmp_path / "run", progress=False, epoch_callback=stop_at_2)
    assert summary["stopped_after_epoch"] == 2
    assert [r["epoch"] for r in seen] == [1, 2] and all("val_loss" in r and "val_auroc_mean" in r for r in seen)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if r.get("kind") == "epoch"] == [1, 2]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (2, 0)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    # a stopped run is an ordinary run: it resumes and trains its remaining epoch
    summary = T.train(cfg, tiny_cache, tmp_path / "run", resume="last", progress=False)
    assert [r["epoch"] for r in summary["epochs"]] == [3]


def test_epoch_callback_error_ends_the_run_naming_the_epoch(tiny_cache, tiny_cfg, tmp_path):
    def broken(record):
        raise KeyError("storage gone")

    with pytest.raises(RuntimeError, match="epoch callback failed after epoch 1: KeyError"):
        T.train(tiny_cfg(epochs=2), tiny_cache, tmp_path / "run", progress=False, epoch_callback=broken)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


# ------------------------------------------------------------------------------------------ chexnet tune


@pytest.fixture(scope="module")
def study3(tiny_cache, tmp_path_factory):
    """A finished 3-trial study (read it; copy it before adding to it)."""
    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yaml")
    with torch_threads(1):
        assert cli.main(tune_args(tiny_cache, root / "study", space, 3, "--seed", 0)) == 0
    return root / "study", space


@needs_optuna
def test_trials_complete_with_table_plots_and_a_best_yaml_that_trains(study3, tiny_cache, tmp_path, capsys):
    import pandas as pd

    study, _ = study3
    table = pd.read_csv(study / "trials.csv")
    assert list(table["number"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert {"value", "duration_s", "param_optimizer", "param_lr", "run"} <= set(table.columns)
    for n in range(3):  # each trial is a normal run directory
        run = study / "trials" / f"{n:04d}"
        assert {"config.yaml", "run.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "best.pt").is_file()
    for plot in ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values"):
        assert (study / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    best = load(study).best_trial
    best_yaml = yaml.safe_load((study / "best.yaml").read_text())
    trial_cfg = yaml.safe_load((study / "trials" / f"{best.number:04d}" / "config.yaml").read_text())
    assert best_yaml == trial_cfg  # the trial's full config: epochs, lr, optimizer, ... as trained
    assert best_yaml["epochs"] == 1 and best_yaml["lr"] == pytest.approx(best.params["lr"])

    assert cli.main(["train", "--cache", str(tiny_cache), "--out", str(tmp_path / "again"), "--config",
                     str(study / "best.yaml"), "--max-steps-per-epoch", "1", "--no-progress"]) == 0
    trained = config_from_dict(yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())).to_dict()
    assert {**trained, "max_steps_per_epoch": best_yaml["max_steps_per_epoch"]} == best_yaml

    trial_run = study / "trials" / f"{best.number:04d}"  # chexnet evaluate takes a trial as any run
    assert cli.main(["evaluate", str(trial_run), "--split", "val", "--bootstrap", "10", "--no-plots"]) == 0
    assert (trial_run / "eval" / "val" / "metrics.json").is_file()

    capsys.readouterr()
    assert cli.main(["tune", "--summary", str(study)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETE" in out and f"best: trial {best.number}" in out


@needs_optuna
def test_running_again_resumes_the_same_study(study3, tiny_cache, tmp_path, capsys):
    src, space = study3
    study = tmp_path / src.name  # same folder name: same study name
    shutil.copytree(src, study)
    before = [(t.number, t.value) for t in load(study).trials]
    assert cli.main(tune_args(tiny_cache, study, space, 3)) == 0  # the same command: the study is complete
    assert "nothing to run" in capsys.readouterr().err
    assert cli.main(tune_args(tiny_cache, study, space, 4)) == 0
    after = load(study).trials
    assert [(t.number, t.value) for t in after[:3]] == before and len(after) == 4
    assert after[3].state.name == "COMPLETE" and (study / "trials" / "0003" / "checkpoints" / "last.pt").is_file()


@needs_optuna
def test_a_clearly_worse_trial_is_pruned_and_keeps_its_run(tiny_cache, tmp_path):
    import optuna

    study = tmp_path / "study"
    queue = new_study(study)
    # an earlier trial that reached a validation loss of 0 at epoch 1: any real trial is worse there (BCE > 0),
    # whatever its training trajectory, so the median pruner prunes it after epoch 1
    queue.add_trial(optuna.trial.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    queue.enqueue_trial({"head_bias_init": "ones", "lr": 1e-6})
    space = write_space(tmp_path / "space.yaml", "head_bias_init: {type: categorical, choices: [zeros, ones]}\n"
                                                 "lr: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}\n")
    assert cli.main(tune_args(tiny_cache, study, space, 2, "--pruner", "median", "--pruner-startup-trials", 1,
                              "--pruner-warmup-epochs", 0, epochs=2)) == 0
    first, second = load(study).trials
    assert (first.state.name, second.state.name) == ("COMPLETE", "PRUNED")
    assert second.user_attrs["pruned_after_epoch"] == 1 and second.intermediate_values[1] > first.intermediate_values[1]
    run = study / "trials" / "0001"
    assert [r["epoch"] for r in read_metrics(run) if r.get("kind") == "epoch"] == [1]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert "PRUNED" in (study / "trials.csv").read_text()


@needs_optuna
def test_a_trial_that_raises_is_failed_with_its_error_and_the_study_goes_on(tiny_cache, tmp_path, capsys):
    study = tmp_path / "study"
    queue = new_study(study)
    queue.enqueue_trial({"batch_size": 1000})  # more than the 52 training images
    queue.enqueue_trial({"batch_size": 4})
    space = write_space(tmp_path / "space.yaml", "batch_size: {type: categorical, choices: [4, 1000]}\n")
    assert cli.main(tune_args(tiny_cache, study, space, 2)) == 0
    failed, ok = load(study).trials
    assert (failed.state.name, ok.state.name) == ("FAIL", "COMPLETE")
    assert "batch 1000" in failed.user_attrs["error"]
    assert "batch 1000" in capsys.readouterr().out  # the printed table lists the errors
    assert (study / "best.yaml").is_file()


@needs_optuna
@pytest.mark.parametrize("text, named", [
    ("learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}\n", "'learning_rate' is not a config field"),
    ("lr: {type: float, low: 1.0e-4}\n", "'lr': type float needs 'high'"),
    ("optimizer: {type: categorical, choices: [adam, rmsprop]}\n", "'optimizer': choice 'rmsprop' is not valid"),
    ("batch_size: {type: float, low: 4, high: 8}\n", "'batch_size': field 'batch_size' is an integer"),
    ("lr: {type: float, low: 0.0, high: 1.0, log: true}\n", "'lr': a log scale needs low > 0"),
    ("arch: {type: categorical, choices: [densnet121]}\n", "'arch': 'densnet121' is not a torchvision model"),
    ("lr: 0.001\n", "'lr': expected a mapping with 'type'"),
])
def test_a_bad_space_is_an_error_naming_the_key(text, named, tiny_cache, tmp_path, capsys):
    space = write_space(tmp_path / "bad.yaml", text)
    assert cli.main(tune_args(tiny_cache, tmp_path / "study", space, 1)) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexnet tune: error: search space") and named in err and "bad.yaml" in err
    assert not (tmp_path / "study").exists()  # checked before any study or trial exists


@pytest.fixture
def offline_torch(tmp_path, monkeypatch):
    """An empty torch cache (TORCH_HOME) and no network: any download fails at once (as in tests/test_models.py)."""
    import urllib.error

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # follow TORCH_HOME even if set_dir was called
    return tmp_path / "torch"


@needs_optuna
@pytest.mark.parametrize("space_text, missing", [
    (SPACE, "mobilenet_v3_small"),  # the base config's arch (the demo space without --config demo)
    ("arch: {type: categorical, choices: [mobilenet_v3_small, resnet18]}\n", "resnet18"),  # one the space draws
])
def test_weights_no_trial_can_load_stop_the_study_before_it_starts(space_text, missing, offline_torch, tiny_cache,
                                                                   tmp_path, capsys):
    from chexnet.models import imagenet_weights_path

    cached = imagenet_weights_path("mobilenet_v3_small")[1]  # in the torch cache for the second case
    if missing != "mobilenet_v3_small":
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"")
    space = write_space(tmp_path / "space.yaml", space_text)
    assert cli.main(tune_args(tiny_cache, tmp_path / "study", space, 3, "--set", "weights=imagenet")) == 2
    err = capsys.readouterr().err
    assert f"no trial can start: model {missing} with weights imagenet: WeightsUnavailable" in err, err
    assert "--set weights=none" in err
    assert not (tmp_path / "study").exists()  # checked before any study or trial exists


@needs_optuna
@pytest.mark.parametrize("case, named", [
    ("no cache", "not a chexnet cache"),
    ("empty val", "the val split is empty"),
    ("unknown label", "label(s) Pneumonitis have no known value in the train split"),
])
def test_a_cache_that_does_not_fit_the_config_stops_the_study_before_it_starts(case, named, tiny_cache, tmp_path,
                                                                               capsys):
    from chexnet.data.cache import read_index

    cache, extra = tiny_cache, []
    if case == "no cache":
        cache = tmp_path / "nowhere"
    elif case == "empty val":
        cache = tmp_path / "cache"
        shutil.copytree(tiny_cache, cache)
        index = read_index(cache / "index.csv")
        index.loc[index["split"] == "val", "split"] = "train"
        index.to_csv(cache / "index.csv", index=False)
        meta = json.loads((cache / "meta.json").read_text())  # as a prepare with no val patients writes it
        meta["splits"]["train"]["images"] += meta["splits"]["val"]["images"]
        meta["splits"]["val"] = {"images": 0, "patients": 0}
        (cache / "meta.json").write_text(json.dumps(meta))
    else:
        extra = ["--set", "labels=Atelectasis,Pneumonitis"]
    space = write_space(tmp_path / "space.yaml")
    assert cli.main(tune_args(cache, tmp_path / "study", space, 3, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexnet tune: error: ") and named in err, err
    assert not (tmp_path / "study").exists()


@needs_optuna
def test_a_study_whose_trials_all_fail_alike_stops_and_exits_non_zero_naming_the_error(tiny_cache, tmp_path, capsys):
    study = tmp_path / "study"
    space = write_space(tmp_path / "space.yaml", "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                                                 "batch_size: {type: categorical, choices: [1000]}\n")
    assert cli.main(tune_args(tiny_cache, study, space, 8)) == 2
    out, err = capsys.readouterr()
    assert states(study) == ["FAIL"] * 3  # stopped after three identical failures, not eight
    line = err.strip().splitlines()[-1]
    assert line.startswith("chexnet tune: error: every trial so far failed with: ValueError: ") and "batch 1000" in line
    assert "batch 1000" in out and "no complete trial yet" in out  # the table and outputs are written first
    assert "FAIL" in (study / "trials.csv").read_text()


@needs_optuna
def test_only_a_run_of_identical_failures_without_any_working_trial_stops_a_study():
    import optuna
    from optuna.trial import TrialState, create_trial

    from chexnet.tune import repeated_failure

    def study_of(*trials):
        study = optuna.create_study()
        for t in trials:
            study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": t}) if isinstance(t, str)
                            else create_trial(value=t))
        return study

    assert repeated_failure(study_of("A", "A")) is None  # too few to tell
    assert repeated_failure(study_of("A", "A", "A")) == "every trial so far failed with: A"
    assert repeated_failure(study_of("B", "A", "A", "A")) == "every trial so far failed, the last 3 with: A"
    assert repeated_failure(study_of("A", "B", "A")) is None  # not the same error
    assert repeated_failure(study_of(0.5, "A", "A", "A")) is None  # a trial worked: the space is not all wrong


def test_bundled_spaces_search_the_reports_choices():
    from chexnet.searchspace import list_spaces, load_space

    assert {"report", "demo"} <= set(list_spaces())
    report = {p.name: p for p in load_space("report").params}
    assert set(report["optimizer"].choices) == {"adam", "sgd", "adadelta", "adamw"}
    assert set(report["arch"].choices) == {"densenet121", "vgg16_bn", "resnet50", "efficientnet_b0"}
    assert report["lr"].kind == "float" and report["lr"].log
    assert {"batch_size", "weight_decay"} <= set(report)
    assert load_space("demo").params


@needs_optuna
def test_openers_of_a_new_storage_at_once_all_get_it(tmp_path):
    """Optuna stamps a new database's schema version check-then-insert: of several openers racing on a new file,
    the losers got an IntegrityError (this failed CI's two-process test once). open_storage retries it."""
    import threading

    from chexnet.tune import open_storage, storage_url

    for rep in range(8):  # the race was lost in about one fresh database in five with six openers
        url, errors = storage_url(tmp_path / f"s{rep}"), []
        (tmp_path / f"s{rep}").mkdir()
        start = threading.Barrier(6)

        def opener():
            start.wait()
            try:
                open_storage(url, heartbeat=False)
            except Exception as exc:  # noqa: BLE001 - the test reports whatever an opener raised
                errors.append(repr(exc))

        threads = [threading.Thread(target=opener) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


@needs_optuna
def test_two_processes_share_one_sqlite_study(tiny_cache, tmp_path):
    study, space = tmp_path / "study", write_space(tmp_path / "space.yaml")
    args = [sys.executable, "-m", "chexnet", *tune_args(tiny_cache, study, space, 4)]
    procs = [subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    trials = load(study).trials
    assert [t.number for t in trials] == list(range(len(trials))) and 4 <= len(trials) <= 5
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["host"] for t in trials}) == 2  # both processes ran trials
    assert sorted(p.name for p in (study / "trials").iterdir()) == [f"{t.number:04d}" for t in trials]
    for t in trials:
        assert Path(t.user_attrs["run"]) == (study / "trials" / f"{t.number:04d}").resolve()
        assert (Path(t.user_attrs["run"]) / "checkpoints" / "last.pt").is_file()


@needs_optuna
@pytest.mark.slow
@pytest.mark.parametrize("extra, workers", [([], 2), (["--set", "strategy=ps"], 1)], ids=["allreduce", "ps"])
def test_a_two_process_trial_reports_from_its_workers_and_is_pruned_on_every_rank(tiny_cache, tmp_path, monkeypatch,
                                                                                  extra, workers):
    """Under all-reduce both processes train; under ``strategy=ps`` one is the worker and one the server (its
    stop comes through the same rank-0 decision)."""
    import optuna

    # the trial's launcher sets variables in this process for good: give it a clean environment to restore after
    env = subprocess_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)
    for k in set(os.environ) | set(env):
        monkeypatch.setenv(k, env[k]) if k in env else monkeypatch.delenv(k)
    study = tmp_path / "study"
    # an earlier trial that reached a validation loss of 0 at epoch 1: any real trial is worse there
    new_study(study).add_trial(optuna.trial.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    space = write_space(tmp_path / "space.yaml")
    assert cli.main(tune_args(tiny_cache, study, space, 2, "--nproc-per-trial", 2, "--pruner-startup-trials", 1,
                              "--pruner-warmup-epochs", 0, *extra, epochs=2)) == 0
    trial = load(study).trials[1]
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_after_epoch"] == 1
    assert list(trial.intermediate_values) == [1]  # reported by rank 0 of the workers, from the training loop
    run = study / "trials" / "0001"
    assert yaml.safe_load((run / "run.json").read_text())["world_size"] == workers  # training ranks
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # both ranks stopped after epoch 1
