"""The ONLY module that reads launcher environment variables or calls ``torch.distributed`` directly.

Launchers understood (the same ``chexnet train`` command runs unchanged under each):

* torchrun / ``chexnet train --nproc N`` (torch elastic): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT.
* Open MPI ``mpirun``: OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE.
* MPICH and Intel MPI (Hydra): PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS.
* SLURM ``srun``: SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE
  (or SLURM_NTASKS_PER_NODE), SLURM_STEP_NODELIST (or SLURM_NODELIST). Only inside a job *step* (SLURM_STEP_ID set,
  as srun sets it): a plain ``chexnet train`` in an ``sbatch`` script or ``salloc`` shell also sees SLURM_PROCID and
  SLURM_NTASKS of the allocation, but nothing started its peers, so it runs as one process.

Under MPI or srun, MASTER_ADDR defaults to the first host of SLURM_NODELIST (or localhost for a single
node) and MASTER_PORT to 29500; export them for multi-node MPI jobs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
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


def init(timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """``hvd.init()``'s twin: join the process group the launcher set up (nccl on CUDA, gloo otherwise)."""
    info = detect()
    device = device_for(info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.distributed and not dist.is_initialized():
        if info.launcher != "torchrun":  # MPI / SLURM: give torch the rendezvous it expects
            nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
            os.environ.setdefault("MASTER_ADDR", first_slurm_host(nodes))
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(info.rank), str(info.world_size)
            os.environ["LOCAL_RANK"] = str(info.local_rank)
        # NCCL for CUDA tensors; gloo too on GPUs so that small CPU-side collectives (gather_object) also work
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return info, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


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


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    t = t.detach().clone()
    if is_initialized():
        dist.all_reduce(t, op=op)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks (MetricAverageCallback's twin). Returns a new tensor on ``t``'s device."""
    return _all_reduce(t, dist.ReduceOp.SUM) / world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def all_gather_objects(obj) -> list:
    """Gather one picklable object from every rank (a list in rank order; ``[obj]`` when not distributed)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
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
    """How many times torch elastic has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running stats) to every rank, e.g. before validation, so every
    rank evaluates exactly the model that rank 0 checkpoints."""
    if not is_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
