"""``chexnet.train`` with REAL 2-process gloo groups: rank-0-only checkpoints, identical weights on every rank,
metric averaging, 2-process evaluation == 1-process evaluation, and elastic restarts after a SIGKILL.

The process groups are real: ``torch.multiprocessing.spawn`` with MASTER_ADDR/PORT (as torchrun sets them), or
``chexnet train/evaluate --nproc 2`` (torch elastic) in a subprocess. Inside spawned ranks, the module's
``train_one_epoch`` and ``CheckpointSaver.save`` are wrapped by *spies* that call the real functions and record what
happened (which rank saved, the parameter checksums after each epoch); nothing of torch.distributed is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chexnet.checkpoint import load_checkpoint
from chexnet.runlog import read_metrics
from tests.helpers import free_port

WORLD = 2
pytestmark = pytest.mark.timeout(400)


def _train_worker(rank: int, port: int, cache: str, run: str, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import chexnet.train as T
    from chexnet.checkpoint import CheckpointSaver
    from chexnet.config import config_from_dict

    record = {"saves": [], "epochs": []}
    real_epoch, real_save = T.train_one_epoch, CheckpointSaver.save

    def spy_epoch(net, *args, **kwargs):
        result = real_epoch(net, *args, **kwargs)
        params = [p.detach().double() for p in net.parameters()]
        record["epochs"].append({"loss": result["loss"], "checksum": [float(p.sum() + (p * p).sum()) for p in params],
                                 "wrapped": type(net).__name__})
        return result

    def spy_save(saver, state, improved=False):
        for name in ("last.pt", "best.pt") if improved else ("last.pt",):
            record["saves"].append({"path": name, "epoch": state["epoch"], "step": state["step_in_epoch"]})
        return real_save(saver, state, improved)

    T.train_one_epoch, CheckpointSaver.save = spy_epoch, spy_save
    summary = T.train(config_from_dict(cfg_dict), cache, run, progress=False)
    record["summary_world"] = summary["world_size"]
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def two_rank_run(tiny_cache, tiny_cfg, tmp_path_factory):
    """A 2-epoch run of two ranks with the bf16 compression hook, 2 accumulation steps (DDP no_sync between
    them) and a checkpoint every step."""
    import torch.multiprocessing as mp

    base = tmp_path_factory.mktemp("ddp_run")
    run, out = base / "run", base / "spy"
    out.mkdir()
    cfg = tiny_cfg(epochs=2, max_steps_per_epoch=2, checkpoint_every=1, grad_compression="bf16", accum_steps=2)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_train_worker, args=(free_port(), str(tiny_cache), str(run), cfg.to_dict(), str(out)),
                 nprocs=WORLD, join=True)
    finally:
        os.environ.pop("OMP_NUM_THREADS", None) if old is None else os.environ.__setitem__("OMP_NUM_THREADS", old)
    return run, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow  # shares a ~15-20 s two-process training run
def test_ddp_training_keeps_ranks_identical_with_bf16_hook_and_accumulation(two_rank_run):
    _, (r0, r1) = two_rank_run
    assert len(r0["epochs"]) == len(r1["epochs"]) == 2
    for e0, e1 in zip(r0["epochs"], r1["epochs"]):
        assert e0["wrapped"] == "DistributedDataParallel"
        assert e0["checksum"] == e1["checksum"], "weights differ across ranks after an epoch"
        assert e0["loss"] == e1["loss"], "the epoch's train loss must be the all-reduced mean, the same on every rank"
    assert r0["summary_world"] == r1["summary_world"] == 2


@pytest.mark.slow  # shares a ~15-20 s two-process training run
def test_checkpoints_are_written_by_rank_zero_only(two_rank_run):
    run, (r0, r1) = two_rank_run
    assert r1["saves"] == [], f"rank 1 wrote checkpoints: {r1['saves']}"
    names = [(s["path"], s["epoch"], s["step"]) for s in r0["saves"]]
    # a mid-epoch last.pt after step 1 of each epoch, last.pt (+ best.pt when the val loss improved) at epoch ends
    assert ("last.pt", 0, 1) in names and ("last.pt", 1, 0) in names
    assert ("last.pt", 1, 1) in names and ("last.pt", 2, 0) in names
    assert any(n == "best.pt" for n, _, _ in names)
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best.pt", "last.prev.pt", "last.pt"], f"stray files in checkpoints/: {files}"  # + the one before


@pytest.mark.slow  # shares a ~15-20 s two-process training run
def test_distributed_checkpoint_holds_the_unwrapped_model(two_rank_run, tiny_cfg):
    from chexnet.models import create_model

    run, (r0, _) = two_rank_run
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"]), "DDP's 'module.' prefix leaked into the checkpoint"
    model = create_model(tiny_cfg().arch, "none")
    model.load_state_dict(ckpt["model"])  # strict
    sums = [float(p.detach().double().sum() + (p.detach().double() ** 2).sum()) for p in model.parameters()]
    assert sums == r0["epochs"][-1]["checksum"]
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["launcher"] == "torchrun"
    records = read_metrics(run)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")


@pytest.mark.slow
def test_validation_metrics_2_processes_equal_1_process(trained_run, copy_run, chexnet_cli):
    """``chexnet evaluate RUN --split val``: predictions and AUROCs identical with --nproc 2 and one process."""
    from chexnet.evaluate import evaluate_run

    run = copy_run(trained_run)
    # batch size 1 on both sides: every image goes through the same computation (same shapes, one thread), so the
    # probabilities are equal by construction, not to a few ulps that could swap near-tied scores in an AUROC
    evaluate_run(run, "best", "val", "none", batch_size=1, n_resamples=20, plots=False)  # one process, in this one
    one = pd.read_csv(run / "eval" / "val" / "predictions.csv")
    one_metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    (run / "eval" / "val").rename(run / "eval" / "val-1proc")
    chexnet_cli("evaluate", run, "--split", "val", "--bootstrap", "20", "--batch-size", "1", "--nproc", "2",
                "--no-plots")
    two = pd.read_csv(run / "eval" / "val" / "predictions.csv")
    two_metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())

    assert len(one) == 20 and list(one["image"]) == list(two["image"]), "same rows, same order, no padding duplicates"
    prob_cols = [c for c in one.columns if one[c].dtype.kind == "f"]
    assert len(prob_cols) >= 14
    np.testing.assert_allclose(two[prob_cols].to_numpy(), one[prob_cols].to_numpy(), rtol=0, atol=1e-6)
    other = [c for c in one.columns if c not in prob_cols]
    assert one[other].equals(two[other])
    flat1, flat2 = _auroc_values(one_metrics), _auroc_values(two_metrics)
    assert flat1 and flat1.keys() == flat2.keys()
    for k in flat1:
        assert flat2[k] == pytest.approx(flat1[k], abs=1e-6, nan_ok=True), k


def _auroc_values(metrics) -> dict:
    """Every number under a key containing 'auroc' (the layout of metrics.json belongs to report.py)."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (str(k),))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (str(i),))
        elif isinstance(node, (int, float)) and node is not True and node is not False and any("auroc" in p.lower() for p in path):
            out["/".join(path)] = float(node)

    walk(metrics, ())
    return out


# --------------------------------------------------------------------------------------- elastic restarts


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc; no psutil)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _worker_with_rank(launcher_pid: int, rank: int, attempt: int = 0) -> int | None:
    """The pid of the worker process of ``rank`` that torch elastic started under ``launcher_pid`` in restart
    ``attempt`` (0: the first start), or None."""
    for pid in _children(launcher_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"chexnet" in cmd and f"TORCHELASTIC_RESTART_COUNT={attempt}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_max_restarts_survives_a_sigkilled_worker(tiny_cache, tmp_path, train_args, cli_env):
    """--nproc 2 --max-restarts 1: SIGKILL rank 1 mid-epoch; the group restarts, resumes from last.pt, completes."""
    run = tmp_path / "run"
    args = train_args(tiny_cache, run, epochs=2, max_steps_per_epoch=6, checkpoint_every=1)
    proc = subprocess.Popen([sys.executable, "-m", "chexnet", *args, "--nproc", "2", "--max-restarts", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    last = run / "checkpoints" / "last.pt"
    killed, state_at_kill = None, None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if last.is_file():
                victim = _worker_with_rank(proc.pid, 1)
                if victim is not None:
                    state_at_kill = load_checkpoint(last)
                    os.kill(victim, signal.SIGKILL)
                    killed = victim
                    break
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, "never saw a checkpoint and a rank-1 worker to kill"
    assert state_at_kill["epoch"] == 0 and 0 < state_at_kill["step_in_epoch"] < 6, "the kill was meant to land mid-epoch"
    assert proc.returncode == 0, output[-5000:]
    assert "resumed from" in output, output[-5000:]
    final = load_checkpoint(last)
    assert final["epoch"] == 2 and final["step_in_epoch"] == 0 and final["global_step"] == 12
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2], "each epoch logged once, after the restart too"
    assert all(r.get("val_auroc_mean") is not None for r in epochs)
