"""``mpirun -np 2 chexnet train`` under a real Open MPI ``mpirun`` on one host (issue 9).

Nothing is exported but PYTHONPATH / OMP_NUM_THREADS (``-x``): MASTER_ADDR defaults to localhost because every
rank runs on this host, MASTER_PORT is derived from Open MPI's job id. The run must be the same training as
``chexnet train --nproc 2`` (torch elastic): the same per-epoch metrics, to 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from chexnet.checkpoint import load_checkpoint
from tests.helpers import LAUNCHER_RUN, assert_same_epochs, final_sums, subprocess_env, tiny_train_args

MPIRUN = shutil.which("mpirun")


def _open_mpi() -> str | None:
    """Why the test cannot run, or None."""
    if MPIRUN is None:
        return "mpirun not found (Debian/Ubuntu: apt-get install openmpi-bin; .ci/run installs it as root)"
    try:
        version = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mpirun --version failed: {exc}"
    if "Open MPI" not in version and "OpenRTE" not in version:
        return f"mpirun is not Open MPI ({version.strip().splitlines()[:1]})"
    return None


def mpirun_command(np: int, env: dict) -> list[str]:
    """mpirun for ``np`` ranks on this host: as root it needs --allow-run-as-root; --oversubscribe lets 2 ranks
    share fewer cores; -x hands the variables the ranks need (each only when set)."""
    cmd = [MPIRUN, "-np", str(np), "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    for name in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONUNBUFFERED"):
        if name in env:
            cmd += ["-x", name]
    return cmd


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_mpirun_trains_like_nproc(tiny_cache, tmp_path, reference_run):
    reason = _open_mpi()
    if reason:
        pytest.skip(reason)
    run = tmp_path / "run"
    env = subprocess_env()
    cmd = mpirun_command(2, env) + [sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run, **LAUNCHER_RUN)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mpirun exited {proc.returncode}:\n{output[-5000:]}"

    info = json.loads((run / "run.json").read_text())
    assert (info["launcher"], info["world_size"]) == ("openmpi", 2)
    assert "x 2 (openmpi)" in output  # rank 0 announces the group it joined
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["world_size"]) == (2, 2)
    assert_same_epochs(run, reference_run)

    sums = final_sums(output)
    assert sorted(sums) == [0, 1] and sums[0] == sums[1], output[-3000:]
    assert "all 2 ranks hold identical final weights" in output
    assert output.count("epoch 1/2:") == 1, "progress is printed by rank 0 only"


@pytest.mark.timeout(120)
def test_nproc_under_mpirun_is_an_error_and_starts_no_group(tiny_cache, tmp_path):
    """``mpirun -np 2 chexnet train --nproc 2``: each MPI rank would start its own 2-process group, all writing the
    same run directory. Each rank refuses, naming the launcher it found, before it touches the run directory."""
    reason = _open_mpi()
    if reason:
        pytest.skip(reason)
    run = tmp_path / "run"
    env = subprocess_env()
    cmd = mpirun_command(2, env) + [sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run), "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert output.count("chexnet train: error: --nproc 2: this process was started by Open MPI's mpirun") == 2, \
        output[-3000:]
    assert "(rank 0 of 2)" in output and "(rank 1 of 2)" in output and "choose one launcher" in output
    assert "x 2 (" not in output, "no training group started"
    assert not run.exists(), "the run directory is untouched"
