"""A rank that dies mid-collective: the survivor's error names it (real 2-process gloo groups on loopback).

The portable half of the two-host fault tests (tests/multiproc/test_two_nodes.py needs root for network namespaces):
two processes join through ``chexnet.dist.init`` with torchrun's environment, all-reduce in a loop, and one of
them exits abruptly. The other gets ``PeerLostError`` from ``dist.naming_lost_peers`` naming the lost rank, found
by the liveness check through the rendezvous store; when the lost rank hosted that store (rank 0), the survivor
says that rank 0's host is lost or that it is itself cut off.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import free_port, subprocess_env

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from chexnet import dist
    victim = int(sys.argv[1])
    info, _ = dist.init(timeout_s=8)
    t = torch.ones(256)
    try:
        with dist.naming_lost_peers(info):
            for i in range(100000):
                if i == 20 and info.rank == victim:
                    os._exit(9)  # no goodbye: as if the host had vanished
                torch.distributed.all_reduce(t)
    except dist.PeerLostError as exc:
        print("PEERLOST:", exc, flush=True)
        sys.exit(3)
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", [1, 0])
def test_survivor_names_the_lost_rank(victim):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(victim)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=subprocess_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, LOCAL_WORLD_SIZE=2,
                                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (0, 1)]
    start = time.time()
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    survivor = 1 - victim
    assert procs[victim].returncode == 9
    assert procs[survivor].returncode == 3, outs[survivor][-3000:]
    line = next(x for x in outs[survivor].splitlines() if x.startswith("PEERLOST:"))
    assert f"rank {survivor} (" in line and "127.0.0.1" in line
    if victim == 1:
        assert "lost rank 1 (" in line and "liveness check" in line, line
    else:  # rank 0 also hosted the rendezvous store
        assert "rank 0 (" in line and "rank 0's host is lost, or this host is cut off" in line, line
    assert time.time() - start < 60, "a dead peer is noticed at once, not after the 30-minute default"
