"""One-process training runs: checkpoint contents and atomicity, exact resume (epoch boundary and mid-epoch),
refusal of incompatible resumes, non-finite losses, the run directory and its logs."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import chexnet.train as T
from chexnet import cli
from chexnet.checkpoint import load_checkpoint, save_checkpoint
from chexnet.config import config_from_dict
from chexnet.engine import NonFiniteLossError
from chexnet.labels import PATHOLOGIES
from chexnet.runlog import read_metrics
from tests.helpers import TINY, torch_threads

pytestmark = pytest.mark.timeout(300)


def assert_same_state(a: dict, b: dict, what: str = "checkpoint") -> None:
    """Bit-identical model, optimizer and LR-controller states."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{what}: model tensor {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            va, vb = sa[i][k], sb[i][k]
            assert (torch.equal(va, vb) if torch.is_tensor(va) else va == vb), f"{what}: optimizer state {i}.{k} differs"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr"] == b["lr"]
    assert (a["epoch"], a["step_in_epoch"], a["global_step"]) == (b["epoch"], b["step_in_epoch"], b["global_step"])


@pytest.fixture(scope="module")
def straight(tiny_cache, tiny_cfg, tmp_path_factory):
    """2 epochs of 3 steps in one go, last.pt every 2 steps; a copy of every checkpoint written is kept."""
    base = tmp_path_factory.mktemp("straight")
    copies = []
    import chexnet.checkpoint as C

    real = C.atomic_write  # CheckpointSaver writes last.pt and best.pt (and run.json) through it

    def keep_copies(path, data):
        real(path, data)
        if Path(path).name not in ("last.pt", "best.pt"):
            return
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        dest = base / f"saved-{len(copies)}-{Path(path).stem}-e{state['epoch']}-s{state['step_in_epoch']}.pt"
        shutil.copyfile(path, dest)
        copies.append((Path(path).name, state["epoch"], state["step_in_epoch"], dest))

    cfg = tiny_cfg(epochs=2, checkpoint_every=2)
    C.atomic_write = keep_copies
    try:
        with torch_threads(1):
            T.train(cfg, tiny_cache, base / "run", progress=False)
    finally:
        C.atomic_write = real
    return cfg, base / "run", copies


def _copy(copies, name, epoch, step) -> Path:
    found = [c[3] for c in copies if c[:3] == (name, epoch, step)]
    assert found, f"no {name} saved at epoch {epoch} step {step}: {[c[:3] for c in copies]}"
    return found[-1]


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_contents_and_run_directory(trained_run, tiny_cfg):
    cfg = tiny_cfg()
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(trained_run / "checkpoints" / name, map_location="cpu", weights_only=True)
        for key in ("model", "optimizer", "lr", "scaler", "epoch", "step_in_epoch", "global_step", "selection", "rng",
                    "config", "labels", "preprocessing", "versions", "world_size"):
            assert key in ckpt, f"{name} lacks {key!r}"
        assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 0 and ckpt["global_step"] == 3
        assert not any(k.startswith("module.") for k in ckpt["model"])
        assert ckpt["labels"] == list(PATHOLOGIES)
        assert config_from_dict(ckpt["config"]) == cfg
        assert {"torch", "torchvision", "chexnet", "numpy", "python"} <= set(ckpt["versions"])
        assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
        assert ckpt["optimizer"]["state"] and ckpt["optimizer"]["param_groups"][0]["lr"] > 0
        assert set(ckpt["lr"]) >= {"plateau_scale", "best_val", "bad_evals"}
        assert ckpt["selection"]["select"] == "val_loss" and math.isfinite(ckpt["selection"]["best"])
        assert ckpt["preprocessing"] == {**ckpt["preprocessing"], "cache_size": 48, "input_size": 32,
                                         "input_transform": "resize"}
    assert config_from_dict(yaml.safe_load((trained_run / "config.yaml").read_text())) == cfg
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    records = read_metrics(trained_run)
    train = [r for r in records if r["kind"] == "train"]
    epoch = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["img_per_s"] > 0 for r in train)
    assert len(epoch) == 1 and epoch[0]["val_loss"] > 0 and set(epoch[0]["auroc"]) == set(PATHOLOGIES)


def test_scaled_lr_is_printed(tiny_cache, tiny_cfg, tmp_path, capsys):
    T.train(tiny_cfg(max_steps_per_epoch=1, lr=0.01, lr_reference_batch=16, lr_scaling="linear"), tiny_cache,
            tmp_path / "r", progress=False)
    err = capsys.readouterr().err
    assert "global batch 4" in err and "0.0025" in err and "linear" in err, err


class _Evil:
    pass


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_checkpoint_write_keeps_previous_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"version": 1})

    class Boom(Exception):
        pass

    real = torch.save

    def failing(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise Boom()

    torch.save = failing
    try:
        with pytest.raises(Boom):
            save_checkpoint(path, {"version": 2})
    finally:
        torch.save = real
    assert load_checkpoint(path)["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


KILL_SCRIPT = textwrap.dedent("""
    import io, os, sys, time
    import torch
    from chexnet.checkpoint import save_checkpoint

    path = sys.argv[1]
    save_checkpoint(path, {"version": 1, "w": torch.arange(10.0)})
    real = torch.save

    def slow_save(obj, f, *args, **kwargs):  # a write that stalls half-way (a big checkpoint on a slow disk)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print("HALF", flush=True)
        time.sleep(120)
        f.write(data[len(data) // 2:])

    torch.save = slow_save
    save_checkpoint(path, {"version": 2, "w": torch.zeros(200_000)})
    print("DONE", flush=True)
""")


def test_sigkill_during_checkpoint_write_leaves_previous_loadable(tmp_path, cli_env):
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True,
                            env=cli_env())
    try:
        line = proc.stdout.readline()
        assert line.strip() == "HALF", line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = load_checkpoint(path)  # weights_only=True inside
    assert state["version"] == 1 and torch.equal(state["w"], torch.arange(10.0))
    temps = [p for p in path.parent.iterdir() if p.name != "last.pt"]
    assert len(temps) == 1, "the interrupted write went to a temp file next to last.pt"
    with pytest.raises(Exception):
        torch.load(temps[0], weights_only=True)
    save_checkpoint(path, {"version": 3})  # the next save still works
    assert load_checkpoint(path)["version"] == 3


# ------------------------------------------------------------------------------------------ resume


def test_one_epoch_plus_resume_equals_two_epochs_straight(straight, tiny_cache, train_args, tmp_path, capsys):
    """The issue's test: 2 epochs straight == 1 epoch, then ``chexnet train --resume --epochs 2``."""
    _, straight_run, _ = straight
    run = tmp_path / "run"
    assert cli.main(train_args(tiny_cache, run, epochs=1)) == 0
    assert cli.main(["train", "--cache", str(tiny_cache), "--out", str(run), "--resume", "--epochs", "2",
                     "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().err
    a = load_checkpoint(straight_run / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert_same_state(a, b, "1 epoch + resume vs 2 epochs")
    assert config_from_dict(yaml.safe_load((run / "config.yaml").read_text())).epochs == 2
    epochs = [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"]
    assert epochs == [1, 2]


@pytest.mark.parametrize("epoch,step", [(0, 2), (1, 1)])
def test_mid_epoch_resume_equals_straight(straight, tiny_cache, tmp_path, epoch, step):
    """Resuming from a --checkpoint-every checkpoint written mid-epoch lands on the straight run's final state."""
    cfg, straight_run, copies = straight
    src = _copy(copies, "last.pt", epoch, step)
    T.train(cfg, tiny_cache, tmp_path / "run", resume=str(src), progress=False)
    a = load_checkpoint(straight_run / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert_same_state(a, b, f"resume from epoch {epoch} step {step}")


def test_straight_run_checkpointed_every_two_steps(straight):
    _, _, copies = straight
    last = [(e, s) for name, e, s, _ in copies if name == "last.pt"]
    assert last == [(0, 2), (1, 0), (1, 1), (2, 0)]


def test_resume_auto_and_missing_last(tiny_cache, tiny_cfg, tmp_path):
    with pytest.raises(T.ResumeError, match="last.pt"):
        T.train(tiny_cfg(), tiny_cache, tmp_path / "none", resume="last", progress=False)
    with pytest.raises(T.ResumeError, match="no such checkpoint"):
        T.train(tiny_cfg(), tiny_cache, tmp_path / "none", resume=str(tmp_path / "x.pt"), progress=False)
    summary = T.train(tiny_cfg(max_steps_per_epoch=1), tiny_cache, tmp_path / "auto", resume="auto", progress=False)
    assert summary["global_step"] == 1  # nothing to resume: a fresh start
    summary = T.train(tiny_cfg(max_steps_per_epoch=1, epochs=2), tiny_cache, tmp_path / "auto", resume="auto",
                      progress=False)
    assert summary["global_step"] == 2 and [r["epoch"] for r in summary["epochs"]] == [2]


@pytest.mark.parametrize("change,names", [
    ({"arch": "resnet34"}, ("arch", TINY["arch"], "resnet34")),
    ({"labels": PATHOLOGIES[:13]}, ("labels", "Hernia")),
    ({"input_size": 40}, ("input_size", "32", "40")),
    ({"input_transform": "crop"}, ("input_transform", "resize", "crop")),
])
def test_incompatible_resume_is_refused_naming_the_difference(trained_run, copy_run, tiny_cache, tiny_cfg, change, names):
    run = copy_run(trained_run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(T.ResumeError) as err:
        T.train(tiny_cfg(**change), tiny_cache, run, resume="last", progress=False)
    for n in names:
        assert n in str(err.value), str(err.value)
    assert (run / "config.yaml").read_text() == before, "a refused resume must not touch the run"


def test_incompatible_resume_from_the_command_line(trained_run, copy_run, tiny_cache, capsys):
    run = copy_run(trained_run)
    rc = cli.main(["train", "--cache", str(tiny_cache), "--out", str(run), "--resume", "--arch", "resnet34",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "arch" in err and TINY["arch"] in err and "resnet34" in err, err


# ------------------------------------------------------------------------------------------ non-finite losses


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> Path:
    """A chexnet state dict whose head bias is NaN: every loss is NaN from the first step."""
    from chexnet.models import create_model

    torch.manual_seed(0)
    model = create_model(TINY["arch"], "none")
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_nonfinite_loss_stops_naming_epoch_and_step(nan_weights, tiny_cache, tiny_cfg, tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        # log only at the epoch's end: the check before the step-1 checkpoint must catch it
        T.train(tiny_cfg(weights=str(nan_weights), checkpoint_every=1, log_every=3), tiny_cache, tmp_path / "run",
                progress=False)
    msg = str(err.value)
    assert re.search(r"epoch 1\b", msg) and re.search(r"step 1\b", msg) and "--skip-nonfinite" in msg, msg
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists(), "a non-finite state must never be saved"


def test_nonfinite_loss_stops_the_cli_with_a_clear_error(nan_weights, tiny_cache, train_args, tmp_path, capsys):
    rc = cli.main(train_args(tiny_cache, tmp_path / "run", weights=nan_weights))
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err and re.search(r"epoch 1\b.*step 1\b", err), err


def _loss_blows_up_at(monkeypatch, step: int) -> None:
    """The training criterion's loss becomes NaN (and so do its gradients) at optimizer step ``step`` (1-based;
    one criterion call per step with accum_steps 1), as a diverging run's would: when is known, not left to
    where a huge LR happens to take a trajectory."""
    real_build = T.build_criterion

    def build(*args, **kwargs):
        criterion = real_build(*args, **kwargs)
        forward, calls = criterion.forward, []

        def scripted(logits, targets):
            calls.append(None)
            loss = forward(logits, targets)
            return loss * float("nan") if len(calls) == step else loss

        criterion.forward = scripted
        return criterion

    monkeypatch.setattr(T, "build_criterion", build)


def test_a_diverging_loss_stops_the_run_naming_its_epoch_and_step(tiny_cache, train_args, tmp_path, capsys,
                                                                  monkeypatch):
    """The issue's example (an absurd LR blows the loss up), scripted: the loss turns NaN at step 4 of 6."""
    _loss_blows_up_at(monkeypatch, 4)
    rc = cli.main(train_args(tiny_cache, tmp_path / "run", optimizer="sgd", max_steps_per_epoch=6))
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err and re.search(r"epoch 1, global step 4 \(step 4 of the epoch\)", err), err
    assert "--skip-nonfinite" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists(), "a non-finite state must never be saved"
    capsys.readouterr()
    rc = cli.main(train_args(tiny_cache, tmp_path / "skipped", optimizer="sgd", max_steps_per_epoch=6)
                  + ["--skip-nonfinite"])
    assert rc == 0, capsys.readouterr().err
    train = [r for r in read_metrics(tmp_path / "skipped") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and [r["skipped"] for r in train] == [0, 0, 0, 1, 1, 1]
    ckpt = load_checkpoint(tmp_path / "skipped" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_skip_nonfinite_lets_the_run_continue(nan_weights, tiny_cache, tiny_cfg, tmp_path):
    run = tmp_path / "run"
    summary = T.train(tiny_cfg(weights=str(nan_weights), skip_nonfinite=True), tiny_cache, run, progress=False)
    assert summary["global_step"] == 3
    train = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert train[-1]["skipped"] == 3
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert torch.isnan(ckpt["model"]["fc.bias"]).all(), "skipped steps must not update the weights"


def test_elastic_restart_prefers_the_runs_newest_checkpoint_over_an_explicit_resume_path(
        straight, trained_run, copy_run, tiny_cache, tiny_cfg, monkeypatch, capsys):
    """After torch elastic restarts the group (TORCHELASTIC_RESTART_COUNT > 0), the run continues from the newest
    complete checkpoint of RUN, even when the command line said ``--resume OLD.pt``: resuming from OLD.pt again
    would throw away everything done since the start."""
    _, _, copies = straight
    older = _copy(copies, "last.pt", 0, 2)  # epoch 1, step 2 of 3
    run = copy_run(trained_run)  # its last.pt: epoch 1 complete
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    summary = T.train(tiny_cfg(), tiny_cache, run, resume=str(older), progress=False)
    err = capsys.readouterr().err
    assert f"resumed from {run / 'checkpoints' / 'last.pt'}" in err, err
    assert summary["epochs"] == [], "epoch 1 was already complete in RUN: nothing to redo"


def test_a_fresh_run_refuses_a_folder_with_checkpoints(trained_run, copy_run, tiny_cache, tiny_cfg):
    """Without --resume, training into another run's folder would mix logs and leave its best.pt behind."""
    run = copy_run(trained_run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(T.ResumeError, match="already holds checkpoints.*--resume"):
        T.train(tiny_cfg(seed=5), tiny_cache, run, progress=False)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def _tag_run(run: Path, run_id: str) -> None:
    import json

    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "elastic_run_id": run_id}))


def test_a_node_joining_or_leaving_an_elastic_job_continues_the_run(trained_run, copy_run, tiny_cache, tiny_cfg,
                                                                    monkeypatch, capsys):
    """torch elastic restarts the workers when nodes join or leave a ``--nnodes MIN:MAX`` job without counting a
    restart (TORCHELASTIC_RESTART_COUNT stays 0). The job's rendezvous id, recorded in run.json, tells the new
    workers that RUN is theirs: they continue from last.pt instead of refusing the folder."""
    run = copy_run(trained_run)
    _tag_run(run, "job-7")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    summary = T.train(tiny_cfg(epochs=2), tiny_cache, run, progress=False)
    assert f"resumed from {run / 'checkpoints' / 'last.pt'}: epoch 2" in capsys.readouterr().err
    assert [r["epoch"] for r in summary["epochs"]] == [2]


@pytest.mark.parametrize("run_id", ["another-job", "none"])
def test_another_elastic_job_still_refuses_the_folder(trained_run, copy_run, tiny_cache, tiny_cfg, monkeypatch, run_id):
    run = copy_run(trained_run)
    _tag_run(run, "job-7" if run_id != "none" else "none")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)  # torchrun's default id 'none' identifies no job
    with pytest.raises(T.ResumeError, match="already holds checkpoints"):
        T.train(tiny_cfg(epochs=2), tiny_cache, run, progress=False)


def test_resuming_with_another_world_size_says_what_changed(trained_run, copy_run, tiny_cache, tiny_cfg, capsys):
    """A checkpoint of a 2-process group continued by 1 process (an elastic restart on the remaining node)."""
    run = copy_run(trained_run)
    last = run / "checkpoints" / "last.pt"
    save_checkpoint(last, {**load_checkpoint(last), "world_size": 2})
    T.train(tiny_cfg(epochs=2), tiny_cache, run, resume="last", progress=False)
    err = capsys.readouterr().err
    assert "was saved by 2 process(es), this run has 1: global batch 8 -> 4, lr 0.001414 -> 0.001 (sqrt scaling)" in err
