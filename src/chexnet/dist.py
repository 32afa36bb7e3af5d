"""The ONLY module that reads launcher environment variables or uses ``torch.distributed`` process groups.

``chexnet.launch`` starts processes (torch elastic's launcher, Spark's TorchDistributor) and reads none of
these variables: whether a launcher already started this process is ``detect().launcher != "none"``, the one
rule the CLI applies before ``--nproc`` (which is an error under another launcher).

Launchers understood (the same ``chexnet train`` command runs unchanged under each):

* torchrun / ``chexnet train --nproc N`` (torch elastic): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT.
* Open MPI ``mpirun``: OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE.
* MPICH and Intel MPI (Hydra): PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS.
* SLURM ``srun``: SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE
  (or SLURM_NTASKS_PER_NODE), SLURM_STEP_NODELIST (or SLURM_NODELIST). Only inside a job *step* (SLURM_STEP_ID set,
  as srun sets it): a plain ``chexnet train`` in an ``sbatch`` script or ``salloc`` shell also sees SLURM_PROCID and
  SLURM_NTASKS of the allocation, but nothing started its peers, so it runs as one process.

Under MPI or srun, MASTER_ADDR defaults to the first host of SLURM_NODELIST, or to localhost when every rank runs
on one host; a multi-host MPI job without MASTER_ADDR is an error that says so (rank 0's host cannot be known from
the MPI environment). MASTER_PORT defaults to a port derived from the launcher's job id (Open MPI's jobid, SLURM's
job and step ids: 29500-31499), so that two jobs on one host do not collide; 29500 where there is no job id.
Without OMP_NUM_THREADS, each rank of an MPI / srun job uses the cores it is bound to, or its share of the host's
cores when it is not bound (``--bind-to none``).

``init(timeout_s)`` is the process-group timeout: how long a collective (or the initial rendezvous) waits for a
peer before it fails (``--dist-timeout``). ``naming_lost_peers`` turns a failed collective into an error that
names the rank(s) that stopped answering, found through the rendezvous store: a rank is alive when it answers
the liveness check, or when its heartbeat (a counter each rank's daemon thread bumps in the store every
``BEAT_S`` seconds) moves during the check -- so that a rank blocked elsewhere (a parameter-server worker waiting
on its server while the server finds another worker gone) is not named lost.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# DistInfo.launcher -> how a user knows it
LAUNCHER_NAMES = {"torchrun": "torchrun (torch elastic)", "openmpi": "Open MPI's mpirun",
                  "mpich": "MPICH / Intel MPI (Hydra)", "slurm": "SLURM's srun"}


def describe_launcher(info: DistInfo) -> str:
    """``Open MPI's mpirun (rank 1 of 2)``: the launcher that started this process, as said in errors."""
    return f"{LAUNCHER_NAMES.get(info.launcher, info.launcher)} (rank {info.rank} of {info.world_size})"


def _first_int(env, *names, default=None):
    for n in names:
        if n in env and str(env[n]).strip() != "":
            return int(str(env[n]).split("(")[0].split(",")[0])
    return default


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM hostlist such as ``node[03-05,9],gpu1`` -> ``node03``."""
    m = re.match(r"^([^\[,]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return "localhost"
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def detect(env=None) -> DistInfo:
    """Read rank / world size from whichever launcher started this process (none: single process)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), _first_int(env, "LOCAL_RANK", default=0),
                        _first_int(env, "LOCAL_WORLD_SIZE", default=int(env["WORLD_SIZE"])), "torchrun")
    if "OMPI_COMM_WORLD_RANK" in env:
        return DistInfo(int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                        _first_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
                        _first_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=1), "openmpi")
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return DistInfo(int(env["PMI_RANK"]), int(env["PMI_SIZE"]),
                        _first_int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID", default=0),
                        _first_int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", default=1), "mpich")
    if "SLURM_PROCID" in env and in_slurm_step(env):
        ntasks = _first_int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1)
        if ntasks > 1:
            return DistInfo(int(env["SLURM_PROCID"]), ntasks, _first_int(env, "SLURM_LOCALID", default=0),
                            _first_int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", default=1), "slurm")
    return DistInfo()


# SLURM's reserved step ids: the batch script and the "extern" step are not srun steps with peers
_SLURM_BATCH_STEP, _SLURM_EXTERN_STEP = 0xFFFFFFFE, 0xFFFFFFFF


def in_slurm_step(env) -> bool:
    """True inside an ``srun`` job step (SLURM_STEP_ID / SLURM_STEPID set to a real step), not in the batch script."""
    step = _first_int(env, "SLURM_STEP_ID", "SLURM_STEPID", default=None)
    return step is not None and step not in (_SLURM_BATCH_STEP, _SLURM_EXTERN_STEP)


def device_for(info: DistInfo) -> torch.device:
    """One GPU per local rank when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_PORT, PORT_SPAN = 29500, 2000  # derived ports: 29500-31499, below Linux's ephemeral range (32768-60999)


class PeerLostError(RuntimeError):
    """A collective failed because a peer died, was cut off, or did not answer within the process-group timeout."""


def job_id(info: DistInfo, env=None) -> str | None:
    """The launcher's id for this job (the same on every rank), or None."""
    env = os.environ if env is None else env
    if info.launcher == "openmpi":
        return env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE") or None
    if info.launcher == "slurm" and env.get("SLURM_JOB_ID"):
        return f"{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', env.get('SLURM_STEPID', ''))}"
    return None


def default_master_port(info: DistInfo, env=None) -> int:
    """MASTER_PORT when the launcher gives none: derived from the job id, so concurrent jobs on a host differ."""
    jid = job_id(info, env)
    return DEFAULT_PORT if jid is None else DEFAULT_PORT + zlib.crc32(jid.encode()) % PORT_SPAN


def rendezvous_env(info: DistInfo, env=None) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK for an MPI or srun rank (torch's env:// init).

    Raises ValueError for a multi-host MPI job without MASTER_ADDR: each rank would otherwise wait on its own
    localhost until the timeout.
    """
    env = os.environ if env is None else env
    out = {"RANK": str(info.rank), "WORLD_SIZE": str(info.world_size), "LOCAL_RANK": str(info.local_rank)}
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST")  # srun, or mpirun in an allocation
        if nodes:
            addr = first_slurm_host(nodes)
        elif info.local_world_size >= info.world_size:
            addr = "localhost"
        else:
            raise ValueError(f"{info.launcher}: {info.world_size} ranks on several hosts ({info.local_world_size} on "
                             f"this one) but MASTER_ADDR is not set: export MASTER_ADDR=<rank 0's host> to every rank "
                             f"(mpirun -x MASTER_ADDR=HOST -x MASTER_PORT=PORT ...)")
    out["MASTER_ADDR"] = addr
    out["MASTER_PORT"] = env.get("MASTER_PORT") or str(default_master_port(info, env))
    return out


def default_threads(info: DistInfo, env=None) -> int | None:
    """Intra-op threads for a rank started by MPI / srun without OMP_NUM_THREADS: the cores it is bound to, or
    its share of the host when it is not bound. None: leave torch's choice (set, or another launcher)."""
    env = os.environ if env is None else env
    if info.launcher not in ("openmpi", "mpich", "slurm") or env.get("OMP_NUM_THREADS"):
        return None
    from chexnet.environment import usable_cpus

    usable, total = usable_cpus(), os.cpu_count() or 1
    return usable if usable < total else max(1, total // max(1, info.local_world_size))


# what every rank knows about the others once the group is up: [{"rank", "host", "addr", "pid"}, ...]
_PEERS: list[dict] = []
_STORE = None  # the rendezvous store (rank 0's TCPStore, or torchrun's), for the liveness probe
_TIMEOUT_S = DEFAULT_TIMEOUT_S
BEAT_S = 1.0  # each rank's heartbeat period in the store (the liveness probe's evidence of a rank busy elsewhere)
_HEARTBEAT: threading.Event | None = None  # set to stop this process's heartbeat thread


def _beat_key(rank: int) -> str:
    return f"beat/{restart_count()}/{rank}"


def _start_heartbeat(rank: int) -> None:
    """A daemon thread that bumps this rank's counter in the store every BEAT_S s until :func:`teardown`.
    Store errors are ignored: a lost store is the liveness probe's finding to report, not the heartbeat's."""
    global _HEARTBEAT
    stop, store, key = threading.Event(), _STORE, _beat_key(rank)

    def run():
        while not stop.wait(BEAT_S):
            try:
                store.add(key, 1)
            except Exception:
                pass

    _HEARTBEAT = stop
    threading.Thread(target=run, name="chexnet-heartbeat", daemon=True).start()


def _own_address(master_addr: str, master_port: str) -> str | None:
    """The local address this host uses to reach MASTER_ADDR (no packet is sent)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(master_addr, int(master_port), proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            return s.getsockname()[0]
    except (OSError, ValueError):
        return None


def init(timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[DistInfo, torch.device]:
    """``hvd.init()``'s twin: join the process group the launcher set up (nccl on CUDA, gloo otherwise).

    ``timeout_s`` bounds the rendezvous and every collective: a peer that is lost makes the others fail after
    at most that long (plus the liveness probe of ``naming_lost_peers``).
    """
    global _STORE, _TIMEOUT_S
    info = detect()
    device = device_for(info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = default_threads(info)
    if threads is not None:
        torch.set_num_threads(threads)
    if info.distributed and not dist.is_initialized():
        if info.launcher != "torchrun":  # MPI / SLURM: give torch the rendezvous it expects
            os.environ.update(rendezvous_env(info))
        # NCCL for CUDA tensors; gloo too on GPUs so that small CPU-side collectives (gather_object) also work
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:  # what init_process_group(init_method="env://") does, keeping the store for the liveness probe
            store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
            store.set_timeout(timeout)
            dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                                    world_size=size, timeout=timeout, **kwargs)
        except (dist.DistError, RuntimeError) as exc:
            raise RuntimeError(f"rank {info.rank}/{info.world_size} ({info.launcher}) could not join the process group "
                               f"at MASTER_ADDR:MASTER_PORT = {where} within {timeout_s:g} s (--dist-timeout): is rank "
                               f"0 running, is that address reachable from this host and the port free? ({exc})") from exc
        _STORE, _TIMEOUT_S = dist.PrefixStore("chexnet", store), timeout_s
        me = {"rank": info.rank, "host": socket.gethostname(), "pid": os.getpid(),
              "addr": _own_address(os.environ.get("MASTER_ADDR", "localhost"), os.environ.get("MASTER_PORT", "0"))}
        _PEERS[:] = all_gather_objects(me)
        _start_heartbeat(info.rank)
    return info, device


def peers() -> list[dict]:
    """Every rank's host, address and pid (rank order), gathered when the group was formed; [] when alone."""
    return list(_PEERS)


_ROLES: dict[int, str] = {}  # rank -> its role where the job has roles (chexnet.ps: "server 0 of 2 (parameter shard 0)")


def set_roles(roles: dict[int, str]) -> None:
    """Name each rank's role in errors about lost ranks (:func:`describe_rank`); cleared by :func:`teardown`."""
    _ROLES.clear()
    _ROLES.update(roles)


def describe_rank(rank: int) -> str:
    p = _PEERS[rank] if rank < len(_PEERS) else {}
    role = f", {_ROLES[rank]}" if rank in _ROLES else ""
    return f"rank {rank} ({p.get('host', '?')}, {p.get('addr') or '?'}, pid {p.get('pid', '?')}{role})"


# What a failed collective says when it reaches us as a plain RuntimeError (from DDP's reducer, for example)
# rather than a DistError. Gloo's own messages do not always name gloo: a rank whose link went silent may get
# just "Application timeout caused pair closure". Compared in lower case.
_COMM_FAILURE_TEXTS = (
    "gloo", "nccl", "connection closed by peer", "connection reset by peer", "connection refused",
    "timed out waiting", "broken pipe", "collective operation timeout", "application timeout caused pair closure",
    "socket timeout", "read error", "write error")


def _is_comm_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _COMM_FAILURE_TEXTS)


def _probe(info: DistInfo, wait_s: float) -> tuple[list[int] | None, str | None]:
    """Which ranks are still alive? Each survivor posts a key to the rendezvous store and waits up to ``wait_s``
    for the others' keys; a rank that posts none but whose heartbeat moves meanwhile is alive too (blocked
    elsewhere, e.g. waiting on the rank that found a peer lost). Returns (silent ranks, None), or (None, why the
    store itself is unreachable).

    When the store goes away during the check after rank 0 answered it and after at least two heartbeats'
    silence of the others (rank 0, which hosts the store under most launchers, finished its own check and
    exited), the ranks still silent then are the answer.

    Runs in a daemon thread with a hard deadline: a store client whose host is cut off (no FIN, no RST) can
    block in a read longer than its own timeout.
    """
    if _STORE is None:
        return None, "no rendezvous store"
    prefix, result = f"alive/{restart_count()}/", {}
    pending = [r for r in range(info.world_size) if r != info.rank]
    answered: set[int] = set()
    start = time.monotonic()

    def run():
        nonlocal pending
        try:
            _STORE.set_timeout(datetime.timedelta(seconds=max(1.0, wait_s)))
            _STORE.set(prefix + str(info.rank), "1")
            beats = {r: _STORE.add(_beat_key(r), 0) for r in pending}
            deadline = start + wait_s
            while pending and time.monotonic() < deadline:
                alive = [r for r in pending if _STORE.check([prefix + str(r)])]
                answered.update(alive)
                alive += [r for r in pending if r not in alive and _STORE.add(_beat_key(r), 0) != beats[r]]
                pending = [r for r in pending if r not in alive]
                if pending:
                    time.sleep(0.2)
            result["silent"] = pending
        except Exception as exc:  # rank 0's store is gone (its host died) or cut off from this host
            if 0 in answered and time.monotonic() - start >= 2 * BEAT_S:
                result["silent"] = pending
            else:
                result["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"

    thread = threading.Thread(target=run, name="chexnet-liveness-probe", daemon=True)
    thread.start()
    thread.join(wait_s + 2.0)
    if "silent" in result:
        return result["silent"], None
    return None, result.get("error", f"no answer within {wait_s + 2.0:g} s")


def describe_failure(exc: BaseException, info: DistInfo, probe_wait_s: float | None = None) -> str:
    """An error message naming the rank(s) that stopped answering, from the error itself and a liveness probe."""
    if probe_wait_s is None:
        probe_wait_s = min(15.0, max(3.0, _TIMEOUT_S / 4))
    named = []
    for addr in re.findall(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?:\d+", str(exc)):
        named += [p["rank"] for p in _PEERS if p.get("addr") == addr and p["rank"] != info.rank]
    silent, store_error = _probe(info, probe_wait_s)
    me = describe_rank(info.rank)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if silent:
        lost = ", ".join(describe_rank(r) for r in silent[:8]) + (f" and {len(silent) - 8} more" if len(silent) > 8 else "")
        head = (f"lost {lost}: stopped answering (process died, host lost or cut off, or stuck for more than "
                f"{_TIMEOUT_S:g} s, --dist-timeout) and silent to a liveness check through the rendezvous store")
    elif store_error is not None:
        peers_named = ", ".join(describe_rank(r) for r in sorted(set(named))) or describe_rank(0) + ", the store's host"
        head = (f"lost contact with {peers_named}; the rendezvous store on rank 0's host "
                f"({os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}) does not answer either ({store_error}): "
                f"rank 0's host is lost, or this host is cut off")
    else:
        peers_named = ", ".join(describe_rank(r) for r in sorted(set(named)))
        head = (f"a collective failed ({'peer ' + peers_named if peers_named else 'no peer named'}), "
                f"but every rank answers the liveness check: a rank failed on its own (see its log) or the network "
                f"between ranks dropped a connection")
    return f"{me}: {head}. ({type(exc).__name__}: {first})"


@contextlib.contextmanager
def naming_lost_peers(info: DistInfo):
    """Re-raise a failed collective as PeerLostError naming the lost rank(s), their hosts and addresses."""
    try:
        yield
    except Exception as exc:
        if not (info.distributed and is_initialized() and _is_comm_failure(exc)):
            raise
        raise PeerLostError(describe_failure(exc, info)) from exc


def teardown() -> None:
    global _STORE, _GROUP, _HEARTBEAT
    if _HEARTBEAT is not None:
        _HEARTBEAT.set()
        _HEARTBEAT = None
    _PEERS.clear()
    _ROLES.clear()
    _STORE, _GROUP = None, None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


# the group that the collectives below run over: the whole job (None), or under the parameter-server strategy
# (chexnet.ps) the workers' group on a worker, so that training code sees the N - K workers as its "world"
_GROUP = None


def new_group(ranks) -> object:
    """A sub-group of ``ranks`` (collective: every rank of the job calls it, in the same order); None when alone."""
    if not is_initialized():
        return None
    return dist.new_group(ranks=sorted(ranks))


def set_group(group) -> None:
    """Make ``group`` (from :func:`new_group`; None: the whole job) the group of :func:`barrier`,
    :func:`all_reduce_sum` and the other collectives of this module. Its members must hold the lowest global ranks
    (group rank == global rank), as the parameter-server workers do."""
    global _GROUP
    _GROUP = group


def barrier() -> None:
    if is_initialized():
        dist.barrier(group=_GROUP)


@contextlib.contextmanager
def rank_zero_first(info: DistInfo):
    """Rank 0 runs the block first (e.g. downloads weights), then the others.

    If rank 0 fails inside the block it still releases the others, which then run the block themselves and
    fail with the same clear error instead of waiting for the process-group timeout.
    """
    if not info.is_main:
        barrier()
        yield
        return
    try:
        yield
    finally:
        barrier()


def _all_reduce(t: torch.Tensor, op, group=None) -> torch.Tensor:
    t = t.detach().clone()
    if is_initialized():
        dist.all_reduce(t, op=op, group=_GROUP if group is None else group)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks (MetricAverageCallback's twin). Returns a new tensor on ``t``'s device."""
    return _all_reduce(t, dist.ReduceOp.SUM) / world_size()


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``t`` over the current group (:func:`set_group`), or over ``group``."""
    return _all_reduce(t, dist.ReduceOp.SUM, group)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def world_size() -> int:
    return dist.get_world_size(group=_GROUP) if is_initialized() else 1


# ------------------------------------------------------------------ point to point (chexnet.ps)


def isend(t: torch.Tensor, dst: int, tag: int = 0):
    """Start sending ``t`` to global rank ``dst``; returns the request (``.wait()`` before reusing ``t``)."""
    return dist.isend(t, dst=dst, tag=tag)


def irecv(t: torch.Tensor, src: int, tag: int = 0):
    """Start receiving into ``t`` from global rank ``src``; returns the request."""
    return dist.irecv(t, src=src, tag=tag)


def recv(t: torch.Tensor, src: int, tag: int = 0) -> None:
    dist.recv(t, src=src, tag=tag)


def recv_any(t: torch.Tensor, tag: int = 0) -> int:
    """Receive into ``t`` from whichever rank sends first (with ``tag``); returns that rank."""
    return dist.recv(t, src=None, tag=tag)


def wait_all(requests) -> None:
    for r in requests:
        r.wait()


def send_object(obj, dst: int) -> None:
    """Send one picklable object (weights_only-safe contents: tensors and plain containers) to global rank ``dst``."""
    dist.send_object_list([obj], dst=dst, device=torch.device("cpu"))


def recv_object(src: int):
    box = [None]
    dist.recv_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def all_gather_objects(obj) -> list:
    """Gather one picklable object from every rank (a list in rank order; ``[obj]`` when not distributed)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size(group=_GROUP)
    dist.all_gather_object(out, obj, group=_GROUP)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_GROUP)
    return box[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device, grad_compression: str = "none") -> torch.nn.Module:
    """DistributedDataParallel (bucketed all-reduce overlapped with backward) with an optional compression hook.

    DDP's constructor broadcasts rank 0's parameters and buffers: the "broadcast from rank 0" step.
    """
    if not is_initialized():
        return model
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if grad_compression == "bf16":
        ddp.register_comm_hook(dist.group.WORLD, default_hooks.bf16_compress_hook)
    elif grad_compression == "fp16":
        ddp.register_comm_hook(dist.group.WORLD, default_hooks.fp16_compress_hook)
    return ddp


def restart_count() -> int:
    """How many times torch elastic has restarted this worker group after a failure (0 on the first attempt;
    a restart because nodes joined or left an elastic job does not count)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def elastic_run_id() -> str | None:
    """torch elastic's id of this job (torchrun --rdzv-id, a fresh one per ``--nproc`` or Spark launch), the same
    for every attempt of the job; None outside torch elastic and for torchrun's default id 'none'."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return run_id if run_id and run_id != "none" else None


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running stats) to every rank, e.g. before validation, so every
    rank evaluates exactly the model that rank 0 checkpoints."""
    if not is_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src, group=_GROUP)
