"""Model selection as the paper (lowest validation loss) or by AUROC; portable runs (evaluate --cache); best.pt
never silently replaced by last.pt; a plain ``chexnet train`` in a SLURM batch script runs as one process."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from chexnet import train as T
from chexnet.checkpoint import load_checkpoint
from chexnet.runlog import read_metrics


# Scripted validation results: the loss is lowest after epoch 1, the mean AUROC highest after epoch 2. Training,
# validation passes, checkpoint selection and writing all run for real; only the two numbers the rules compare are
# replaced, so that the rules disagree by construction on every CPU (a real trajectory's numbers do not).
SCRIPTED = {"val_loss": [0.30, 0.35, 0.40], "val_auroc_mean": [0.60, 0.70, 0.65]}


@pytest.fixture(scope="module")
def selection_runs(tiny_cache, tiny_cfg, tmp_path_factory):
    """The same 3 epochs twice, once per selection rule, with the scripted validation results."""
    base = tmp_path_factory.mktemp("select")
    real_validate = T._validate
    with pytest.MonkeyPatch.context() as mp:
        for rule in ("val_loss", "val_auroc"):
            calls = []

            def scripted(*args, **kwargs):
                out = real_validate(*args, **kwargs)
                out.update({k: v[len(calls)] for k, v in SCRIPTED.items()})
                calls.append(out)
                return out

            mp.setattr(T, "_validate", scripted)
            T.train(tiny_cfg(epochs=3, max_steps_per_epoch=2, select=rule), tiny_cache, base / rule, progress=False)
            assert len(calls) == 3
    return base


@pytest.mark.parametrize("rule,pick", [("val_loss", np.argmin), ("val_auroc", np.argmax)])
def test_best_checkpoint_follows_the_selection_rule(selection_runs, rule, pick):
    run = selection_runs / rule
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    values = [r["val_loss" if rule == "val_loss" else "val_auroc_mean"] for r in epochs]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == int(pick(values)) + 1, (rule, values)
    assert best["selection"] == {"select": rule, "best": pytest.approx(values[int(pick(values))])}
    assert json.loads((run / "run.json").read_text())["select"] == rule
    assert [r["best"] for r in epochs].index(True) == 0 and sum(r["best"] for r in epochs) >= 1


def test_the_two_rules_pick_different_epochs_here(selection_runs):
    """Not a tautology: the rules disagree on these results, so each test above checks its own rule."""
    picks = {rule: load_checkpoint(selection_runs / rule / "checkpoints" / "best.pt")["epoch"]
             for rule in ("val_loss", "val_auroc")}
    assert picks == {"val_loss": 1, "val_auroc": 2}, picks


def test_the_best_epoch_is_announced_with_its_rule(tiny_cache, tiny_cfg, tmp_path, capsys):
    T.train(tiny_cfg(max_steps_per_epoch=1), tiny_cache, tmp_path / "r", progress=False)
    err = capsys.readouterr().err
    assert "best.pt: lowest validation loss" in err
    assert re.search(r"\(best: lowest validation loss \d+\.\d{4}", err), err  # any loss: a BCE may exceed 1
    assert "loss: unweighted BCE" in err


def test_weighted_training_validates_with_the_weighted_loss(tiny_cache, tiny_cfg, tmp_path):
    from chexnet.data.cache import load_cache
    from chexnet.data.dataset import open_split
    from chexnet.engine import StepContext, predict_dataset
    from chexnet.runs import load_run_model
    from chexnet.losses import build_criterion, loss_from_probs
    from chexnet.preprocess import input_transform

    T.train(tiny_cfg(loss_weighting="balanced"), tiny_cache, tmp_path / "w", progress=False)
    record = [r for r in read_metrics(tmp_path / "w") if r["kind"] == "epoch"][0]
    assert record["loss_weighting"] == "balanced"
    loaded = load_run_model(tmp_path / "w", "last")
    model, cfg, spec = loaded.model, loaded.cfg, loaded.spec
    _, index, meta = load_cache(tiny_cache)
    train_set = open_split(tiny_cache, index, meta, "train", "train", cfg.input_size, cfg.input_transform)
    val_set = open_split(tiny_cache, index, meta, "val", "eval", cfg.input_size, cfg.input_transform)
    crit = build_criterion(train_set.labels, "balanced")
    probs = predict_dataset(model, val_set, range(len(val_set)), StepContext(torch.device("cpu"), transform=input_transform(spec)))
    assert record["val_loss"] == pytest.approx(loss_from_probs(val_set.labels, probs, crit.w_pos.numpy(),
                                                               crit.w_neg.numpy()), rel=1e-5)
    assert record["val_loss"] != pytest.approx(loss_from_probs(val_set.labels, probs), rel=1e-3)


# ------------------------------------------------------------------------------------------ portable runs


def test_evaluate_a_moved_run_with_cache(trained_run, tiny_cache, tmp_path, chexnet_main):
    run = tmp_path / "elsewhere" / "run"
    shutil.copytree(trained_run, run)
    cache = tmp_path / "cache-copy"
    shutil.copytree(tiny_cache, cache)
    info = json.loads((run / "run.json").read_text())
    info["cache"] = str(tmp_path / "gone" / "cache")  # the training machine's path, absent here
    (run / "run.json").write_text(json.dumps(info))

    proc = chexnet_main("evaluate", run, "--split", "val", "--bootstrap", "20", check=False)
    assert proc.returncode == 2 and "--cache" in proc.stderr and "Traceback" not in proc.stderr

    out = chexnet_main("evaluate", run, "--split", "val", "--bootstrap", "20", "--cache", cache, "--no-plots").stdout
    assert "Atelectasis" in out
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["context"]["cache"] == str(cache)


def test_evaluate_refuses_a_cache_of_another_size(trained_run, copy_run, tmp_path, chexnet_main):
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    run = copy_run(trained_run)
    generate(tmp_path / "data", images=30, size=64, seed=3, progress=False, workers=1)
    prepare(tmp_path / "data", tmp_path / "c40", size=40, workers=1, progress=False)
    proc = chexnet_main("evaluate", run, "--cache", tmp_path / "c40", check=False)
    assert proc.returncode == 2 and "40 px" in proc.stderr and "48 px" in proc.stderr, proc.stderr


def test_best_never_falls_back_to_last(trained_run, copy_run, chexnet_main):
    run = copy_run(trained_run)
    (run / "checkpoints" / "best.pt").unlink()
    proc = chexnet_main("evaluate", run, "--split", "val", check=False)
    assert proc.returncode == 2 and "no checkpoint best.pt" in proc.stderr and "--checkpoint last" in proc.stderr
    chexnet_main("evaluate", run, "--split", "val", "--checkpoint", "last", "--bootstrap", "20", "--no-plots")
    report = (run / "eval" / "val" / "report.md").read_text()
    assert "last.pt: the newest state (not a selected model)" in report


# ------------------------------------------------------------------------------------------ SLURM batch step


def test_plain_train_in_a_slurm_batch_script_runs_as_one_process(tiny_cache, tmp_path, train_args, chexnet_cli):
    """sbatch --ntasks 4 sets SLURM_PROCID / SLURM_NTASKS for the batch script, but without srun nothing starts
    the other 3 tasks: one process, not a 30-minute wait for peers."""
    proc = chexnet_cli(*train_args(tiny_cache, tmp_path / "run", max_steps_per_epoch=1), timeout=120,
                       SLURM_PROCID=0, SLURM_NTASKS=4, SLURM_NTASKS_PER_NODE=4, SLURM_NODELIST="localhost",
                       SLURM_JOB_ID=42)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["world_size"] == 1 and info["launcher"] == "none", proc.stderr


def test_a_label_without_any_known_value_in_training_is_an_error_naming_it(tiny_cache, tiny_cfg, tmp_path):
    """NIH has no Fracture: a model label the training split never knows cannot be trained; nothing is written."""
    with pytest.raises(ValueError, match=r"label\(s\) Fracture have no known value in the train split"):
        T.train(tiny_cfg(labels=("Atelectasis", "Fracture")), tiny_cache, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
