"""Faults under ``--strategy ps`` (issue 20) with REAL gloo process groups: a parameter server or a worker that
dies mid-epoch ends the job within ``--dist-timeout``, the survivors (or, under torch elastic, the launcher) name
the lost process with its role and shard, the last checkpoint loads and ``chexnet evaluate`` runs on it; with
``--max-restarts 1`` the job restarts from that checkpoint and goes on (and, the server killed again with no
restart left, fails naming it).

The survivors' own errors (``PeerLostError`` from ``dist.naming_lost_peers`` around the PS waits) are checked
with three processes -- workers 0 and 1 (ranks 0, 1), server 0 of 1 (rank 2) -- forked from this one (as
tests/multiproc/test_ps.py starts them: no interpreter start-up); the launcher's error, ``chexnet evaluate`` and
the restart through the real CLI with two (``chexnet train --nproc 2 --strategy ps``: worker 0, server 0 as rank
1; each process started by torch elastic imports torch, the dearest part of these tests on 2 cores). A checkpoint
every step; nothing is faked; the victim gets SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chexnet.checkpoint import load_checkpoint
from tests.helpers import free_port
from tests.multiproc.test_train_dist import _worker_with_rank

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

WORLD, TIMEOUT_S = 3, 20  # 2 workers + 1 server; --dist-timeout
ROLES = {0: "worker 0 of 2 (data shard 0)", 1: "worker 1 of 2 (data shard 1)", 2: "server 0 of 1 (parameter shard 0)"}
STEP_DELAY_S = 0.3  # each worker's step takes this much longer in the forked runs: the kill lands mid-epoch


def _rank(rank: int, port: int, cache: str, run: str, cfg_dict: dict, out: str) -> None:
    """One process of the job (forked): train; on PeerLostError write its message to ``out/rank{rank}.err``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    import chexnet.engine as E
    import chexnet.train as T
    from chexnet import dist
    from chexnet.config import config_from_dict

    real = E._accumulate_gradients

    def slow(*args, **kwargs):
        time.sleep(STEP_DELAY_S)
        return real(*args, **kwargs)

    E._accumulate_gradients = slow
    try:
        T.train(config_from_dict(cfg_dict), cache, run, progress=False)
    except dist.PeerLostError as exc:
        Path(out, f"rank{rank}.err").write_text(str(exc))
        os._exit(3)
    os._exit(0)


def _lost_part(message: str) -> str:
    """What a PeerLostError names as lost: the text between 'lost ' and ': stopped answering'."""
    assert "lost rank" in message and ": stopped answering" in message, message
    return message.split("lost ", 1)[1].split(": stopped answering", 1)[0]


@pytest.mark.parametrize("victim", [2, 1], ids=["server", "worker1"])
def test_survivors_name_the_lost_process_with_its_role_and_shard(victim, tiny_cache, tiny_cfg, tmp_path):
    """SIGKILL the server (rank 2) or worker 1 mid-epoch, once a checkpoint exists: every survivor fails within
    --dist-timeout with a PeerLostError naming the victim's rank and role (and no live rank as lost), and the
    last checkpoint loads."""
    import importlib
    import multiprocessing

    importlib.import_module("chexnet.train")  # imported once here, not in each forked child (torchvision: seconds)

    run, out = tmp_path / "run", tmp_path / "errors"
    out.mkdir()
    cfg = tiny_cfg(epochs=1, max_steps_per_epoch=12, checkpoint_every=1, strategy="ps", ps_servers=1,
                   dist_timeout=TIMEOUT_S)
    ctx = multiprocessing.get_context("fork")  # the children inherit the imported torch and chexnet
    port = free_port()
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = [ctx.Process(target=_rank, args=(r, port, str(tiny_cache), str(run), cfg.to_dict(), str(out)))
                 for r in range(WORLD)]
        for p in procs:
            p.start()
    finally:
        os.environ.pop("OMP_NUM_THREADS", None) if old is None else os.environ.__setitem__("OMP_NUM_THREADS", old)
    last = run / "checkpoints" / "last.pt"
    killed_at, state_at_kill = None, None
    try:
        deadline = time.time() + 200
        while time.time() < deadline and all(p.exitcode is None for p in procs):
            if last.is_file():
                state_at_kill = load_checkpoint(last)
                os.kill(procs[victim].pid, signal.SIGKILL)
                killed_at = time.time()
                break
            time.sleep(0.05)
        assert killed_at is not None, f"never saw a checkpoint (exit codes {[p.exitcode for p in procs]})"
        for p in procs:
            p.join(timeout=max(1.0, killed_at + TIMEOUT_S + 30 - time.time()))
        ended = time.time() - killed_at
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    assert 0 < state_at_kill["step_in_epoch"] < 12, "the kill was meant to land mid-epoch"
    assert procs[victim].exitcode == -signal.SIGKILL
    survivors = [r for r in range(WORLD) if r != victim]
    assert [procs[r].exitcode for r in survivors] == [3, 3], [p.exitcode for p in procs]
    assert ended < TIMEOUT_S, f"the survivors took {ended:.1f} s after the kill (--dist-timeout {TIMEOUT_S})"
    for r in survivors:
        message = (out / f"rank{r}.err").read_text()
        assert message.startswith(f"rank {r} (") and ROLES[r] in message.split(":")[0], message
        lost = _lost_part(message)
        assert lost.startswith(f"rank {victim} (") and lost.endswith(f", {ROLES[victim]})"), message
        assert all(ROLES[s] not in lost for s in survivors), f"rank {r} named a live rank as lost: {message}"
        assert "--dist-timeout" in message, message
    state = load_checkpoint(last)  # the newest checkpoint, written before the kill, is whole
    assert state["config"]["strategy"] == "ps" and state["global_step"] >= state_at_kill["global_step"]


def _start_cli(args: list[str], cli_env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chexnet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env())


def _started_at(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (/proc/PID/stat's start time after boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _kill_rank_once_checkpointed(proc: subprocess.Popen, rank: int, last: Path, attempt: int = 0,
                                 within_s: float = 240):
    """SIGKILL the process of ``rank`` that torch elastic started under ``proc`` in restart ``attempt``, once
    ``last`` exists and was written after that process started (so by its own group: torch elastic stops a
    group before it starts the next, and a stopped group's worker may still finish a write after its server was
    killed); returns (kill time, the checkpoint's state at the kill) or (None, None)."""
    deadline = time.time() + within_s
    victim, started = None, None
    while time.time() < deadline and proc.poll() is None:
        if victim is None:
            victim = _worker_with_rank(proc.pid, rank, attempt)
            try:
                # + 1 s: /proc/stat's boot time is whole seconds, rounded down, so the start may read up to 1 s early
                started = _started_at(victim) + 1.0 if victim is not None else None
            except (OSError, IndexError, ValueError):
                victim = None
        if victim is not None and last.is_file() and last.stat().st_mtime > started:
            state = load_checkpoint(last)
            os.kill(victim, signal.SIGKILL)
            return time.time(), state
        time.sleep(0.05)
    return None, None


PS = ["--strategy", "ps", "--ps-servers", "1", "--dist-timeout", str(TIMEOUT_S), "--nproc", "2"]
SERVER = "server 0 of 1 (parameter shard 0)"  # rank 1 of the --nproc 2 jobs


def test_a_killed_server_restarts_the_job_then_fails_it_naming_the_server_and_the_checkpoint_evaluates(
        tiny_cache, tmp_path, train_args, cli_env, chexnet_main):
    """``chexnet train --nproc 2 --strategy ps --max-restarts 1`` (one torch elastic job, the dearest part of
    this file): SIGKILL the server mid-epoch -> the group (server and worker) restarts and resumes from last.pt;
    SIGKILL the restarted server once it has checkpointed again -> no restart is left: the job exits non-zero
    within --dist-timeout, the launcher's error naming the server (not the worker it stopped because of it) with
    its role and shard; ``chexnet evaluate --checkpoint last`` then runs on the run. (That a restarted job
    completes, each epoch logged once, is tests/multiproc/test_train_dist.py's restart test.)"""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    proc = _start_cli(train_args(tiny_cache, run, epochs=3, max_steps_per_epoch=6, checkpoint_every=1) + PS
                      + ["--max-restarts", "1"], cli_env)
    try:
        first_kill, state_at_first = _kill_rank_once_checkpointed(proc, 1, last)
        second_kill, state_at_second = (None, None) if first_kill is None else \
            _kill_rank_once_checkpointed(proc, 1, last, attempt=1)
        output, _ = proc.communicate(timeout=TIMEOUT_S + 60)
        ended = time.time() - (second_kill or time.time())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first_kill is not None, f"never saw a checkpoint and a server to kill:\n{output[-3000:]}"
    assert state_at_first["epoch"] == 0 and 0 < state_at_first["step_in_epoch"] < 6, "meant to land mid-epoch"
    assert second_kill is not None, f"the job did not restart and checkpoint again:\n{output[-5000:]}"
    assert "resumed from" in output, output[-5000:]
    assert output.count(f"chexnet: rank 1/2: {SERVER}") == 2, "the server did not start again"
    assert state_at_second["global_step"] > state_at_first["global_step"], "the restarted job made no progress"
    assert proc.returncode != 0, output[-3000:]
    assert ended < TIMEOUT_S, f"the job took {ended:.1f} s to end after the kill (--dist-timeout {TIMEOUT_S})"
    error = next((x for x in output.splitlines() if x.startswith("chexnet: rank ") and " failed after " in x), None)
    assert error is not None, output[-3000:]
    assert error.startswith(f"chexnet: rank 1 ({SERVER}) failed after 1 restart(s) allowed: ") and "SIGKILL" in error
    state = load_checkpoint(last)
    assert state["config"]["strategy"] == "ps" and state["world_size"] == 1
    done = chexnet_main("evaluate", run, "--checkpoint", "last", "--split", "val", "--bootstrap", "20", "--no-plots")
    assert (run / "eval" / "val" / "metrics.json").is_file(), done.stderr[-3000:]


# ------------------------------------------------------------------------ the launcher's error (no processes)


def test_the_launcher_names_the_first_failure_not_the_processes_it_stopped():
    from types import SimpleNamespace as F

    from chexnet.launch.local import describe_failures, first_failure

    killed = F(exitcode=-signal.SIGKILL, timestamp=100, message="Signal 9 (SIGKILL) received by PID 7")
    stopped = F(exitcode=-signal.SIGTERM, timestamp=100, message="Signal 15 (SIGTERM) received by PID 5")
    exited = F(exitcode=2, timestamp=100, message="exit code 2")
    assert first_failure({0: stopped, 1: stopped, 2: killed}) == 2
    assert first_failure({0: exited, 2: killed}) == 2, "in the same second, a signal's victim before an error exit"
    assert first_failure({0: F(exitcode=2, timestamp=99, message=""), 2: killed}) == 0, "the earlier first"
    assert first_failure({}) is None
    text = describe_failures({0: stopped, 1: exited, 2: killed}, 0, ROLES)
    assert text.startswith(f"chexnet: rank 2 ({ROLES[2]}) failed after 0 restart(s) allowed: Signal 9 (SIGKILL)")
    assert f"also failed: rank 1 ({ROLES[1]}) (exit code 2)" in text
    assert text.endswith(f"stopped by the launcher after it: rank 0 ({ROLES[0]})")
    assert describe_failures({1: killed}, 2).startswith("chexnet: worker rank 1 failed after 2 restart(s) allowed")
