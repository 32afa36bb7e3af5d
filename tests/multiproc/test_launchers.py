"""The same ``chexnet train`` command under MPI- and SLURM-style launchers: two real processes, gloo on CPU.

mpirun / srun are not installed here, so the test starts the two ranks itself with exactly the environment those
launchers give each process (Open MPI's OMPI_COMM_WORLD_*, SLURM's SLURM_*), and nothing torchrun would set.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import free_port, subprocess_env, tiny_train_args
from tests.multiproc.test_mpi import _open_mpi

LAUNCHERS = {
    "openmpi": lambda rank, port: {"OMPI_COMM_WORLD_RANK": rank, "OMPI_COMM_WORLD_SIZE": 2,
                                   "OMPI_COMM_WORLD_LOCAL_RANK": rank, "OMPI_COMM_WORLD_LOCAL_SIZE": 2,
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
    # srun: no MASTER_ADDR; chexnet takes the first host of SLURM_NODELIST
    "slurm": lambda rank, port: {"SLURM_PROCID": rank, "SLURM_NTASKS": 2, "SLURM_LOCALID": rank,
                                 "SLURM_NTASKS_PER_NODE": 2, "SLURM_NODELIST": "localhost", "SLURM_STEP_ID": 0,
                                 "MASTER_PORT": port},
}


# Where Open MPI's mpirun is installed, tests/multiproc/test_mpi.py trains under the real one: the emulated
# environment would only repeat it (a two-process training, the dearest kind of test here).
CASES = [pytest.param(name, marks=pytest.mark.skipif(
    name == "openmpi" and _open_mpi() is None,
    reason="Open MPI's mpirun is installed: tests/multiproc/test_mpi.py trains under the real one")) for name in sorted(LAUNCHERS)]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", CASES)
def test_train_under_launcher_environment(launcher, tiny_cache, tmp_path):
    port = free_port()
    run = tmp_path / "run"
    args = [sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run)]
    procs = [subprocess.Popen(args, env=subprocess_env(**LAUNCHERS[launcher](rank, port)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-3000:]}"
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["launcher"] == launcher
    assert "x 2 (" + launcher + ")" in outputs[0]  # rank 0 announces the group it joined
    assert (run / "checkpoints" / "last.pt").is_file()
