"""``--nproc N``: start N local workers through torch's elastic launcher, exactly as ``torchrun --standalone``.

Each worker runs the same ``python -m chexnet ...`` command line (without ``--nproc``) with the torchrun
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT). When a worker dies
and ``max_restarts`` allows, the agent stops the group and starts it again; ``chexnet train`` then resumes
from the newest complete checkpoint.
"""

from __future__ import annotations

import os
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


def spawn(nproc: int, argv: list[str], max_restarts: int = 0, monitor_interval: float = 1.0) -> None:
    """Run ``python -m chexnet *argv`` in ``nproc`` local worker processes; raise if the group finally fails."""
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
        failures = exc.failures
        first = min(failures) if failures else None
        detail = failures[first].message if first is not None else str(exc)
        raise SystemExit(f"chexnet: worker rank {first} failed after {max_restarts} restart(s) allowed: {detail}") from None
