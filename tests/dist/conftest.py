"""Fixtures for the training / distributed tests (issue 3).

* ``tiny_cache``: a session-wide prepared cache of 96 synthetic images of 48 x 48 (52 train / 20 val / 24 test).
* ``tiny_cfg(**overrides)``: a TrainConfig that trains in about a second per epoch on one core
  (MobileNetV3-Small from scratch, 48 px cache rows resized to 32 px, batch 4, 3 steps per epoch, no loader
  processes; its checkpoint with Adam state is ~12 MB, ResNet-18's was ~135 MB).
* ``trained_run``: a session-wide run directory trained for one epoch on ``tiny_cache`` (read it, never write
  into it: copy it first); ``exported``: its ONNX export.
* ``chexnet_cli(*args)``: run ``python -m chexnet ARGS`` in a subprocess (one thread per process);
  ``chexnet_main(*args)`` the same in this process, for commands that need no launcher environment.
* ``free_port()`` and ``worker_env(...)`` for tests that start real gloo process groups themselves.

Every test runs with one intra-op thread: on 2 shared cores, two threads per process are ~10x slower.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chexnet.config import TrainConfig

TINY = dict(arch="mobilenet_v3_small", weights="none", input_size=32, batch_size=4, epochs=1, workers=0,
            max_steps_per_epoch=3, log_every=1, lr=1e-3, lr_reference_batch=4, seed=0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "CHEXNET_DEBUG"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if env.get("PYTHONPATH"):  # absolute, so that children started in other folders (Spark, namespaces) see the same code
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    root = tmp_path_factory.mktemp("train_cache")
    generate(root / "data", images=96, size=64, seed=0, progress=False, workers=1)
    prepare(root / "data", root / "cache", size=48, workers=1, progress=False, val_fraction=0.3)
    return root / "cache"


@pytest.fixture(scope="session")
def tiny_cfg():
    from chexnet.config import apply_overrides

    def make(**overrides) -> TrainConfig:
        return apply_overrides(TrainConfig(), {**TINY, **overrides}, "test")

    return make


@pytest.fixture(scope="session")
def trained_run(tiny_cache, tmp_path_factory) -> Path:
    """One epoch of the tiny config; a finished, self-describing run directory."""
    from chexnet.config import apply_overrides
    from chexnet.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(apply_overrides(TrainConfig(), TINY, "test"), tiny_cache, run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    """``trained_run``'s best checkpoint exported to ONNX (dynamic batch); skips without chexnet[export]."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs chexnet[export]")
    pytest.importorskip("onnxscript", reason="ONNX export needs chexnet[export]")
    from chexnet.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(trained_run, "best", out, dynamic_batch=True)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def copy_run(tmp_path):
    def copy(run: Path, name: str = "run") -> Path:
        dest = tmp_path / name
        shutil.copytree(run, dest)
        return dest

    return copy


@pytest.fixture
def chexnet_cli():
    def run(*args, timeout: float = 240, check: bool = True, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "chexnet", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env(**env))
        if check and proc.returncode != 0:
            raise AssertionError(f"chexnet {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        return proc

    return run


def tiny_train_args(cache, out, **overrides) -> list[str]:
    """``chexnet train`` arguments for the tiny config (flags for every TINY field)."""
    values = {**TINY, **overrides}
    args = ["train", "--cache", str(cache), "--out", str(out), "--no-progress"]
    for k, v in values.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


@pytest.fixture
def chexnet_main(capsys):
    """``chexnet ARGS`` in this process (no interpreter start-up, ~5 s less than ``chexnet_cli``), for commands
    that need no launcher environment: a CompletedProcess with returncode, stdout and stderr."""
    from chexnet import cli

    def run(*args, check: bool = True) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check and rc != 0:
            raise AssertionError(f"chexnet {' '.join(map(str, args))} exited {rc}\n--- stdout\n{out[-4000:]}\n"
                                 f"--- stderr\n{err[-4000:]}")
        return subprocess.CompletedProcess(list(args), rc, out, err)

    return run


@pytest.fixture(scope="session")
def train_args():
    return tiny_train_args


@pytest.fixture(scope="session")
def cli_env():
    """``cli_env(**extra)``: the environment for a chexnet subprocess (no launcher variables, one thread)."""
    return subprocess_env


# ------------------------------------------------------------- the same training under every launcher (issue 9)

LAUNCHER_RUN = dict(epochs=2)  # the tiny config for two epochs: what mpirun, two hosts and Spark train


def epoch_metrics(run: Path) -> list[dict]:
    """The per-epoch records of ``run`` without wall-clock fields (time, img/s): what equal training gives equal."""
    from chexnet.runlog import read_metrics

    drop = ("time", "img_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run) if r["kind"] == "epoch"]


def assert_same_epochs(run: Path, reference: Path, tol: float = 1e-6) -> None:
    """Every per-epoch number of ``run`` equals ``reference``'s to ``tol`` (losses, lr, per-class AUROC)."""
    got, want = epoch_metrics(run), epoch_metrics(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want], (got, want)

    def flat(record, prefix=""):
        for k, v in record.items():
            if isinstance(v, dict):
                yield from flat(v, prefix + k + ".")
            else:
                yield prefix + k, v

    for g, w in zip(got, want):
        g, w = dict(flat(g)), dict(flat(w))
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=0, abs=tol), f"epoch {w['epoch']}: {k}"
            else:
                assert g[k] == w[k], f"epoch {w['epoch']}: {k}"


@pytest.fixture(scope="session")
def reference_run(tiny_cache, tmp_path_factory) -> Path:
    """``chexnet train --nproc 2`` on the tiny config for 2 epochs: the run other launchers must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run([sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run, **LAUNCHER_RUN),
                           "--nproc", "2"], capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert proc.returncode == 0, f"reference run failed:\n{proc.stderr[-4000:]}"
    return run


@pytest.fixture
def predict_cli(chexnet_main):
    """``chexnet predict ARGS`` in this process (no interpreter start-up): (exit status, stdout, stderr)."""

    def run(*args):
        proc = chexnet_main("predict", *args, "--no-progress", check=False)
        return proc.returncode, proc.stdout, proc.stderr

    return run


def final_sums(text: str) -> dict[int, str]:
    """{rank: checksum} from training's per-rank "final weights sha256" lines (a rank of a 1-process group names
    no host)."""
    import re

    return {int(r): s for r, s in re.findall(r"rank (\d+)/\d+(?: \([^)]*\))?: final weights sha256 ([0-9a-f]{64})", text)}
