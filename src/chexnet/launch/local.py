"""``--nproc N``: start N local workers through torch's elastic launcher, exactly as ``torchrun --standalone``.

Each worker runs the same ``python -m chexnet ...`` command line (without ``--nproc``) with the torchrun
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT). When a worker dies
and ``max_restarts`` allows, the agent stops the group and starts it again; ``chexnet train`` then resumes
from the newest complete checkpoint. When the group finally fails, the error names the process that failed
first -- not one the agent stopped (SIGTERM) because of it -- with its role where the job has roles
(``--strategy ps``: ``rank 2 (server 0 of 1 (parameter shard 0))``).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

from chexnet.environment import usable_cpus


def strip_option(argv: list[str], name: str, has_value: bool = True) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = has_value
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def first_failure(failures: dict) -> int | None:
    """The rank whose failure came first among torch elastic's ``failures`` ({rank: ProcessFailure}): one that
    failed on its own before one the agent stopped with SIGTERM once another had failed, then the earliest (in
    whole seconds), then one killed by a signal (SIGKILL: the kernel's OOM killer, an operator) before one that
    exited with an error (often the peer's loss, noticed), then the lowest rank."""
    if not failures:
        return None
    return min(failures, key=lambda r: (failures[r].exitcode == -signal.SIGTERM, failures[r].timestamp,
                                        failures[r].exitcode >= 0, r))


def describe_failures(failures: dict, max_restarts: int, roles: dict[int, str] | None = None) -> str:
    """``chexnet: rank 2 (server 0 of 1 (parameter shard 0)) failed after 0 restart(s) allowed: Signal 9
    (SIGKILL) received by PID 123; stopped by the launcher after it: rank 0 (worker 0 of 2 (data shard 0))``:
    the error of a finally failed group (``failures``: torch elastic's {rank: ProcessFailure})."""
    first = first_failure(failures)

    def name(r):
        return f"rank {r} ({roles[r]})" if roles and r in roles else f"worker rank {r}"

    if first is None:
        return f"chexnet: the worker group failed after {max_restarts} restart(s) allowed (no failure recorded)"
    stopped = [r for r in sorted(failures) if r != first and failures[r].exitcode == -signal.SIGTERM]
    others = [r for r in sorted(failures) if r != first and r not in stopped]
    text = f"chexnet: {name(first)} failed after {max_restarts} restart(s) allowed: {failures[first].message}"
    if others:
        text += "; also failed: " + ", ".join(f"{name(r)} ({failures[r].message})" for r in others)
    if stopped:
        text += "; stopped by the launcher after it: " + ", ".join(name(r) for r in stopped)
    return text


def spawn(nproc: int, argv: list[str], max_restarts: int = 0, monitor_interval: float = 1.0,
          roles: dict[int, str] | None = None) -> None:
    """Run ``python -m chexnet *argv`` in ``nproc`` local worker processes; raise if the group finally fails.

    ``roles`` ({rank: role}, e.g. chexnet.ps's ``server 0 of 1 (parameter shard 0)``) names the failed process's
    role in that error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torch elastic keeps one TCPStore across restarts; restarted gloo workers could then read the dead group's
    # addresses ("Gloo connectFullMesh failed ... Connection refused", pytorch/pytorch#135712). A fresh store
    # per attempt avoids that.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=monitor_interval, start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "chexnet", *argv)
    except ChildFailedError as exc:
        raise SystemExit(describe_failures(exc.failures, max_restarts, roles)) from None
