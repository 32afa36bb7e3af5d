"""Launcher environments read by ``chexnet.dist.detect`` (torchrun, Open MPI, MPICH / Intel MPI, SLURM), and the
pieces of ``--nproc`` that need no process group (argument stripping)."""

from __future__ import annotations

import pytest
import torch

from chexnet import dist
from chexnet.launch.local import strip_option


def test_no_launcher_is_a_single_process():
    info = dist.detect({})
    assert info == dist.DistInfo(0, 1, 0, 1, "none")
    assert info.is_main and not info.distributed


def test_torchrun():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    info = dist.detect(env)
    assert info == dist.DistInfo(5, 8, 1, 4, "torchrun")
    assert info.distributed and not info.is_main


def test_torchrun_without_local_vars():
    assert dist.detect({"RANK": "0", "WORLD_SIZE": "2"}) == dist.DistInfo(0, 2, 0, 2, "torchrun")


def test_open_mpi():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "3",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert dist.detect(env) == dist.DistInfo(3, 16, 3, 4, "openmpi")


@pytest.mark.parametrize("env", [
    {"PMI_RANK": "6", "PMI_SIZE": "8", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "4"},  # MPICH (Hydra)
    {"PMI_RANK": "6", "PMI_SIZE": "8", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "4", "I_MPI_ROOT": "/opt/intel"},
])
def test_mpich_and_intel_mpi(env):
    assert dist.detect(env) == dist.DistInfo(6, 8, 2, 4, "mpich")


def test_cray_mpich_local_rank_from_pmi_local_rank():
    env = {"PMI_RANK": "6", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "2", "PMI_LOCAL_SIZE": "4"}
    assert dist.detect(env) == dist.DistInfo(6, 8, 2, 4, "mpich")


def test_slurm_srun():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "12", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x3)",
           "SLURM_NODELIST": "gpu[01-03]", "SLURM_STEP_ID": "0"}
    assert dist.detect(env) == dist.DistInfo(9, 12, 1, 4, "slurm")


def test_slurm_step_sizes_win_over_the_allocation():
    """``srun -n 4`` inside a 12-task allocation: the step has 4 tasks, 2 per node."""
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "12", "SLURM_NTASKS_PER_NODE": "4(x3)", "SLURM_LOCALID": "1",
           "SLURM_STEP_ID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    assert dist.detect(env) == dist.DistInfo(3, 4, 1, 2, "slurm")


@pytest.mark.parametrize("step", [None, str(0xFFFFFFFE), str(0xFFFFFFFF)])
def test_slurm_batch_script_without_srun_is_one_process(step):
    """A plain ``chexnet train`` in a multi-task ``sbatch`` script (or ``salloc`` shell): SLURM_PROCID and
    SLURM_NTASKS describe the allocation, but no srun step started peers. One process, no 30-minute wait."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_NODELIST": "n[1-2]",
           "SLURM_JOB_ID": "77"}
    if step is not None:
        env["SLURM_STEP_ID"] = step  # the batch step / extern step ids
    assert dist.detect(env) == dist.DistInfo()


def test_slurm_allocation_with_one_task_is_not_distributed():
    """``sbatch`` + plain ``python`` inside a one-task allocation: not a distributed run."""
    assert dist.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_NODELIST": "n1"}) == dist.DistInfo()


def test_torchrun_inside_slurm_wins():
    """torchrun started by srun: the worker's RANK/WORLD_SIZE (torchrun's) are the ones that count."""
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    assert dist.detect(env).launcher == "torchrun"
    assert dist.detect(env).rank == 3


@pytest.mark.parametrize("nodelist,host", [
    ("node[03-05,9],gpu1", "node03"),
    ("node07", "node07"),
    ("gpu1,gpu2", "gpu1"),
    ("nid[00012-00015]", "nid00012"),
    ("cn[7,2-3]", "cn7"),
    ("  a-b[1-2] ", "a-b1"),
])
def test_first_slurm_host(nodelist, host):
    assert dist.first_slurm_host(nodelist) == host


def test_single_process_helpers_are_noops():
    assert not dist.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(t), t) and torch.equal(dist.all_reduce_sum(t), t)
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(7) == 7
    dist.barrier()
    with dist.rank_zero_first(dist.DistInfo()):
        pass
    m = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(m, torch.device("cpu"), "bf16") is m
    assert dist.device_for(dist.DistInfo()).type in ("cpu", "cuda")


def test_restart_count(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert dist.restart_count() == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert dist.restart_count() == 2


@pytest.mark.parametrize("argv,name,expected", [
    (["train", "--nproc", "2", "--out", "r"], "--nproc", ["train", "--out", "r"]),
    (["train", "--nproc=2", "--out", "r"], "--nproc", ["train", "--out", "r"]),
    (["train", "--max-restarts", "1", "--nproc", "2"], "--max-restarts", ["train", "--nproc", "2"]),
    (["train", "--out", "r"], "--nproc", ["train", "--out", "r"]),
])
def test_strip_option(argv, name, expected):
    assert strip_option(argv, name) == expected


# ------------------------------------------------------------------ MPI / srun rendezvous defaults (issue 9)

OMPI_ONE_HOST = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                 "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1132199937"}


def test_mpirun_on_one_host_needs_no_exports():
    env = dict(OMPI_ONE_HOST)
    out = dist.rendezvous_env(dist.detect(env), env)
    assert out["MASTER_ADDR"] == "localhost"
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"]) == ("1", "2", "1")
    port = int(out["MASTER_PORT"])
    assert dist.DEFAULT_PORT <= port < dist.DEFAULT_PORT + dist.PORT_SPAN < 32768  # below the ephemeral range


def test_master_port_is_derived_from_the_job_so_concurrent_jobs_differ():
    ports = set()
    for jobid in range(1132199937, 1132199937 + 50 * 65536, 65536):  # 50 mpiruns: other job families
        env = {**OMPI_ONE_HOST, "OMPI_MCA_ess_base_jobid": str(jobid)}
        info = dist.detect(env)
        assert dist.default_master_port(info, env) == dist.default_master_port(info, dict(env))  # every rank agrees
        ports.add(dist.default_master_port(info, env))
    assert len(ports) >= 45
    no_job = {k: v for k, v in OMPI_ONE_HOST.items() if k != "OMPI_MCA_ess_base_jobid"}
    assert dist.default_master_port(dist.detect(no_job), no_job) == 29500


def test_slurm_port_depends_on_job_and_step():
    base = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_ID": "77"}
    a, b = {**base, "SLURM_STEP_ID": "0"}, {**base, "SLURM_STEP_ID": "1"}
    assert dist.default_master_port(dist.detect(a), a) != dist.default_master_port(dist.detect(b), b)
    assert dist.rendezvous_env(dist.detect(a), a)["MASTER_ADDR"] == "n1"


def test_exported_master_addr_and_port_win():
    env = {**OMPI_ONE_HOST, "MASTER_ADDR": "node7", "MASTER_PORT": "12345"}
    out = dist.rendezvous_env(dist.detect(env), env)
    assert (out["MASTER_ADDR"], out["MASTER_PORT"]) == ("node7", "12345")


@pytest.mark.parametrize("env", [
    {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
     "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
    {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
])
def test_multi_host_mpi_without_master_addr_is_an_error_not_a_30_minute_wait(env):
    with pytest.raises(ValueError, match="several hosts.*export MASTER_ADDR"):
        dist.rendezvous_env(dist.detect(env), env)


@pytest.mark.parametrize("launcher_env,usable,total,expected", [
    (OMPI_ONE_HOST, 1, 16, 1),      # mpirun --bind-to core: the one core it is bound to
    (OMPI_ONE_HOST, 4, 16, 4),      # --map-by slot:PE=4: its 4 cores
    (OMPI_ONE_HOST, 16, 16, 8),     # --bind-to none: its share, 16 cores / 2 ranks on the host
    ({**OMPI_ONE_HOST, "OMP_NUM_THREADS": "3"}, 16, 16, None),  # the user's choice stands
    ({"RANK": "0", "WORLD_SIZE": "2"}, 16, 16, None),           # torchrun sets OMP_NUM_THREADS itself
])
def test_threads_per_rank(launcher_env, usable, total, expected, monkeypatch):
    monkeypatch.setattr("chexnet.environment.usable_cpus", lambda: usable)
    monkeypatch.setattr(dist.os, "cpu_count", lambda: total)
    assert dist.default_threads(dist.detect(launcher_env), launcher_env) == expected


def test_elastic_run_id(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert dist.elastic_run_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default --rdzv-id identifies nothing
    assert dist.elastic_run_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    assert dist.elastic_run_id() == "job-42"


def test_mpirun_inside_a_slurm_allocation_takes_the_first_node():
    env = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "SLURM_NODELIST": "gpu[07-08]"}
    assert dist.rendezvous_env(dist.detect(env), env)["MASTER_ADDR"] == "gpu07"


@pytest.mark.parametrize("message, comm", [
    ("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms for recv operation to complete", True),
    ("Application timeout caused pair closure", True),  # all a cut-off rank got once (CI, two namespaces)
    ("Connection reset by peer", True),
    ("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x14)", False),
    ("DataLoader worker (pid 123) is killed by signal: Killed.", False),
])
def test_failed_collectives_are_told_from_other_errors(message, comm):
    assert dist._is_comm_failure(RuntimeError(message)) is comm
    assert dist._is_comm_failure(ValueError(message)) is False


LAUNCHED_BY = {
    "torchrun": ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "torchrun (torch elastic) (rank 1 of 2)"),
    "openmpi": ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI's mpirun (rank 0 of 4)"),
    "mpich": ({"PMI_RANK": "2", "PMI_SIZE": "3"}, "MPICH / Intel MPI (Hydra) (rank 2 of 3)"),
    "slurm": ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}, "SLURM's srun (rank 1 of 2)"),
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHED_BY))
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_nproc_under_any_launcher_is_an_error_naming_it(launcher, command, monkeypatch, tmp_path, capsys):
    """One rule for "am I already inside a launcher" (dist.detect): --nproc under one would start a group per rank."""
    from chexnet import cli

    for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    env, said = LAUNCHED_BY[launcher]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = (["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run")] if command == "train"
            else ["evaluate", str(tmp_path / "run")])
    assert cli.main(argv + ["--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert f"chexnet {command}: error: --nproc 2: this process was started by {said}" in err, err
    assert "choose one launcher" in err
    assert not (tmp_path / "run").exists()


def test_spark_launcher_inside_torchrun_is_an_error(monkeypatch, tmp_path, capsys):
    from chexnet import cli

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run"), "--launcher", "spark"]) == 2
    assert "--launcher spark: this process was started by torchrun" in capsys.readouterr().err
