"""Parameter-server training: ``chexnet train --strategy ps --ps-servers K`` (synchronous).

Roles by rank: of the job's N processes, ranks ``0 .. N-K-1`` are **workers** and ranks ``N-K .. N-1`` are
**servers**. Rank 0 is worker 0, so it writes the checkpoints and logs as under all-reduce.

* Each server holds a shard of the parameters -- whole tensors, assigned largest first to the server with the
  fewest bytes so far (balanced by bytes) -- and the optimizer state of that shard (its own torch optimizer, built
  by :func:`chexnet.optim.build_optimizer` as all-reduce's is).
* Each worker runs the ordinary training loop (chexnet.engine) on its data shard, sharded by worker index among
  the N - K workers: the training code sees the workers as its world (``dist.set_group``), so samplers, the
  global batch, the LR scaling, the loss averaging and the checkpoints' world size are those of N - K all-reduce
  processes. ``--nproc N --strategy ps --ps-servers K`` trains what ``--nproc N-K`` trains.
* A step: every worker pushes each gradient shard to its server (point-to-point ``isend``; worker 0 first sends
  each server the step's command and learning rate); each server averages the N - K gradients, clips them by the
  global norm (its shard's squared norm all-reduced over the servers' group), skips a non-finite step under
  ``--skip-nonfinite``, applies its optimizer and sends the updated shard back to every worker (the pull).
  With the same seed, global batch and data order the weights equal DDP's (N - K processes) to rounding.
* Checkpoints: rank 0 asks each server for its optimizer state and assembles one ordinary optimizer state dict
  (the parameters it already holds: each pull brings them all), written as under all-reduce, so that evaluate,
  predict, export and serve work unchanged and a PS run resumes under all-reduce and the other way round.

Asynchronous mode (``--ps-staleness S``, S >= 0; -1, the default, is synchronous): a server applies each worker's
gradient as it arrives (one optimizer step per gradient, at the step's LR, not averaged) and sends that worker the
updated shard once it is at most S steps ahead of the slowest worker still running (a worker's gradients count
its steps; the server records, per applied gradient, ``ahead`` and ``stale``: the updates from other workers its
parameters missed). It is NOT the same training as synchronous or all-reduce: more updates per epoch, computed on
stale parameters, the workers' copies differ between pulls (validation runs on each worker's copy; the
checkpoint takes the servers' newest parameters). The workers still meet in the loss averaging every
``--log-every`` steps and at checkpoints. Several asynchronous servers cannot clip by the global norm nor skip
non-finite steps together: refused.

Everything goes through chexnet.dist (gloo on CPUs; NCCL point-to-point on GPUs), not torch.distributed.rpc.
Not supported with ps: fp16 (GradScaler) and ``--grad-compression`` (DDP hooks); both are refused by name.
Faults: a lost process fails the job within ``--dist-timeout`` with an error naming its rank, host and role
(``server 1 of 2 (parameter shard 1)``, ``worker 1 of 2 (data shard 1)``): each survivor's PeerLostError (the PS
waits run inside train's ``dist.naming_lost_peers``; a rank blocked on its server while the server finds a worker
gone still counts as alive, by its heartbeat), or under torch elastic, which stops the survivors at once, the
launcher's error (``chexnet: rank 2 (server 0 of 1 (parameter shard 0)) failed ...``: the process that failed
first, not those it stopped; the roles come from ``--strategy ps`` / ``--ps-servers`` on the command line). The
last checkpoint is an ordinary one, which ``chexnet evaluate`` reads and ``--max-restarts`` restarts the whole
group from (servers and workers, the servers' shards handed over again from the checkpoint) as under all-reduce.
tests/multiproc/test_ps_faults.py SIGKILLs a server and a worker mid-epoch: each survivor names the lost process,
the launcher names a killed server, evaluate runs on the checkpoint, and ``--max-restarts 1`` resumes and
completes. A process cut off without a FIN (a host lost) is noticed at the process-group timeout, as under
all-reduce (tests/multiproc/test_two_nodes.py covers that for all-reduce).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import torch

from chexnet import dist
from chexnet.config import ConfigError

CMD_STEP, CMD_STATE, CMD_STOP = 1.0, 2.0, 3.0
TAG_CMD, TAG_GRAD, TAG_PARAM, TAG_ASYNC = 11, 12, 13, 14
ASYNC_HEADER = 3  # asynchronous messages: [command, lr, worker's step] + the gradient shard


@dataclass(frozen=True)
class Roles:
    world_size: int
    servers: int

    @property
    def workers(self) -> int:
        return self.world_size - self.servers

    def server_rank(self, shard: int) -> int:
        return self.workers + shard

    def is_server(self, rank: int) -> bool:
        return rank >= self.workers

    def describe(self, rank: int) -> str:
        """The role of ``rank``: ``worker 1 of 3 (data shard 1)`` or ``server 0 of 2 (parameter shard 0)``."""
        if self.is_server(rank):
            s = rank - self.workers
            return f"server {s} of {self.servers} (parameter shard {s})"
        return f"worker {rank} of {self.workers} (data shard {rank})"

    def summary(self) -> str:
        def span(what, a, b):
            return f"{what} {a}" if a == b else f"{what}s {a}-{b}"

        return (f"strategy ps: {self.world_size} processes, {span('rank', 0, self.workers - 1)} worker(s) "
                f"({span('data shard', 0, self.workers - 1)}), {span('rank', self.workers, self.world_size - 1)} "
                f"server(s) ({span('parameter shard', 0, self.servers - 1)})")


def role_names(cfg, world_size: int) -> dict[int, str] | None:
    """{rank: role} of a ``--strategy ps`` job of ``world_size`` processes (None under all-reduce): what the
    launcher names a failed process with (chexnet.launch.local.spawn)."""
    if cfg.strategy != "ps":
        return None
    roles = Roles(world_size, cfg.ps_servers)
    return {r: roles.describe(r) for r in range(world_size)}


def check(cfg, world_size: int) -> None:
    """A ConfigError naming what is wrong with ``--strategy ps`` for a job of ``world_size`` processes."""
    if cfg.strategy != "ps":
        return
    k = cfg.ps_servers
    if k < 1:
        raise ConfigError(f"--ps-servers {k}: --strategy ps needs at least one server (--ps-servers 1 or more)")
    if k >= world_size:
        raise ConfigError(f"--strategy ps --ps-servers {k} with {world_size} process(es): at least one process "
                          f"must be a worker, so the job needs more than {k} processes (--nproc {k + 1} or more, or "
                          f"fewer --ps-servers)")
    if cfg.ps_staleness < -1:
        raise ConfigError(f"--ps-staleness {cfg.ps_staleness}: -1 (synchronous) or a bound S >= 0 (asynchronous)")
    if cfg.ps_staleness >= 0 and k > 1 and (cfg.grad_clip > 0 or cfg.skip_nonfinite):
        raise ConfigError("--ps-staleness (asynchronous) with several servers and --grad-clip or --skip-nonfinite: "
                          "the global gradient norm needs every server at every step; use one server or "
                          "synchronous mode (--ps-staleness -1)")
    if cfg.precision == "fp16":
        raise ConfigError("--strategy ps with --precision fp16: the GradScaler's overflow handling is not implemented "
                          "for parameter servers; use --precision bf16 or fp32")
    if cfg.grad_compression != "none":
        raise ConfigError(f"--strategy ps with --grad-compression {cfg.grad_compression}: compression is a DDP "
                          f"communication hook (--strategy allreduce); use --grad-compression none")


def shard_owners(nbytes: list[int], servers: int) -> list[int]:
    """The server of each parameter: largest first to the least-loaded server (ties: lowest index), so that the
    shards' bytes are balanced and every process computes the same layout."""
    load = [0] * servers
    owner = [0] * len(nbytes)
    for i in sorted(range(len(nbytes)), key=lambda i: (-nbytes[i], i)):
        s = min(range(servers), key=lambda s: (load[s], s))
        owner[i] = s
        load[s] += nbytes[i]
    return owner


@dataclass
class Traffic:
    """What this process sent and received through the PS protocol, and the time it waited on it."""

    bytes_sent: int = 0
    bytes_received: int = 0
    comm_seconds: float = 0.0
    steps: int = 0

    def per_step(self) -> dict:
        n = max(1, self.steps)
        return {"steps": self.steps, "bytes_sent_per_step": self.bytes_sent / n,
                "bytes_received_per_step": self.bytes_received / n, "comm_seconds_per_step": self.comm_seconds / n}


TRAFFIC = Traffic()  # this process's counters (benchmarks read them)
_WORKER = None  # this worker's WorkerOptimizer (rank 0 stops the servers through it)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ the job


def run(cfg, info: dist.DistInfo, device: torch.device, train_fn) -> dict:
    """Run this process's role: a worker calls ``train_fn(worker_info)`` (the ordinary training, its world the
    workers), a server serves its shard until the workers are done. Returns train_fn's summary, or the server's."""
    check(cfg, info.world_size)
    roles = Roles(info.world_size, cfg.ps_servers)
    if info.is_main:
        _say(f"chexnet train: {roles.summary()}")
    print(f"chexnet: rank {info.rank}/{info.world_size}: {roles.describe(info.rank)}", file=sys.stderr, flush=True)
    dist.set_roles({r: roles.describe(r) for r in range(roles.world_size)})  # a lost rank is named with its role
    workers = dist.new_group(range(roles.workers))  # every rank creates every group, in the same order
    servers = dist.new_group(range(roles.workers, roles.world_size))
    TRAFFIC.__init__()
    if roles.is_server(info.rank):
        summary = serve(cfg, roles, info.rank, device, servers)
    else:
        dist.set_group(workers)
        try:
            summary = train_fn(dataclasses.replace(info, world_size=roles.workers,
                                                   local_world_size=min(info.local_world_size, roles.workers)))
        finally:
            dist.set_group(None)
        if info.is_main or cfg.ps_staleness >= 0:  # asynchronous servers wait for every worker's stop
            for s in range(roles.servers):
                _WORKER.command(s, CMD_STOP)
    dist.barrier()  # the whole job: nobody tears the group down while a message is in flight
    summary = dict(summary)
    summary.update({"strategy": "ps", "role": roles.describe(info.rank), "traffic": TRAFFIC.per_step()})
    return summary


# --------------------------------------------------------------------------------------------- the worker


class WorkerOptimizer:
    """The optimizer a worker's training loop sees: ``step`` pushes the gradients to the servers and pulls the
    updated parameters; ``state_dict`` (rank 0) gathers the servers' optimizer states into one ordinary state
    dict. ``param_groups`` are the wrapped optimizer's (the LR controller sets the LR there; it travels with
    each step). chexnet.engine.optimizer_step calls :meth:`remote_step` (clipping and the non-finite check run on
    the servers, over the averaged gradient)."""

    def __init__(self, inner: torch.optim.Optimizer, params: list[torch.nn.Parameter], roles: Roles, worker: int,
                 staleness: int = -1):
        self.inner, self.params, self.roles, self.worker = inner, params, roles, worker
        self.asynchronous, self.steps = staleness >= 0, 0
        owner = shard_owners([_nbytes(p) for p in params], roles.servers)
        self.shards = [[i for i, o in enumerate(owner) if o == s] for s in range(roles.servers)]
        self.numel = [sum(params[i].numel() for i in shard) for shard in self.shards]

    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def attach(self) -> None:
        """Rank 0 sends every server its shard (parameters, optimizer state); every worker pulls the parameters."""
        if self.worker == 0:
            full = self.inner.state_dict()
            if len(full["param_groups"]) != 1:
                raise ValueError("--strategy ps: one optimizer parameter group expected")
            group = {k: v for k, v in full["param_groups"][0].items() if k != "params"}
            for s, shard in enumerate(self.shards):
                dist.send_object({"values": [self.params[i].detach().cpu() for i in shard], "indices": shard,
                                  "state": {j: full["state"][i] for j, i in enumerate(shard) if i in full["state"]},
                                  "group": group, "n_params": len(self.params)}, self.roles.server_rank(s))
        self._pull([])
        TRAFFIC.__init__()  # the counters are the steps': the hand-over is not one

    def _pull(self, requests) -> list[torch.Tensor]:
        p0 = self.params[0]
        replies = [torch.empty(1 + n, dtype=p0.dtype, device=p0.device) for n in self.numel]
        requests = requests + [dist.irecv(r, self.roles.server_rank(s), TAG_PARAM) for s, r in enumerate(replies)]
        t0 = time.perf_counter()
        dist.wait_all(requests)
        TRAFFIC.comm_seconds += time.perf_counter() - t0
        TRAFFIC.bytes_received += sum(_nbytes(r) for r in replies)
        with torch.no_grad():
            for shard, reply in zip(self.shards, replies):
                offset = 1
                for i in shard:
                    p = self.params[i]
                    p.copy_(reply[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
        return replies

    def remote_step(self) -> bool:
        """One synchronous step; False when the servers skipped it (non-finite gradients, --skip-nonfinite)."""
        lr = float(self.inner.param_groups[0]["lr"])
        requests, keep = [], []
        t0 = time.perf_counter()
        if self.worker == 0 and not self.asynchronous:  # the step's command and LR, once, from worker 0
            header = torch.tensor([CMD_STEP, lr], dtype=torch.float64)
            keep.append(header)
            requests += [dist.isend(header, self.roles.server_rank(s), TAG_CMD) for s in range(self.roles.servers)]
        for s, shard in enumerate(self.shards):
            parts = [(self.params[i].grad if self.params[i].grad is not None
                      else torch.zeros_like(self.params[i])).reshape(-1) for i in shard]
            if self.asynchronous:  # one message per server: the header travels with the gradient
                parts.insert(0, torch.tensor([CMD_STEP, lr, float(self.steps)], dtype=self.params[0].dtype,
                                             device=self.params[0].device))
            flat = torch.cat(parts)
            keep.append(flat)  # isend needs the tensor alive until it completes
            TRAFFIC.bytes_sent += _nbytes(flat)
            requests.append(dist.isend(flat, self.roles.server_rank(s), TAG_ASYNC if self.asynchronous else TAG_GRAD))
        TRAFFIC.comm_seconds += time.perf_counter() - t0
        replies = self._pull(requests)
        TRAFFIC.steps += 1
        if self.asynchronous:
            self.steps += 1  # a worker's gradients count its steps (the staleness bound)
        return all(bool(r[0] > 0.5) for r in replies)

    def state_dict(self) -> dict:
        """The optimizer state of all shards as one optimizer over all parameters would hold it (rank 0 only)."""
        state, group = {}, None
        for s, shard in enumerate(self.shards):
            self.command(s, CMD_STATE)
            local = dist.recv_object(self.roles.server_rank(s))
            for j, st in local["state"].items():
                state[shard[int(j)]] = st
            with torch.no_grad():  # asynchronous servers send their newest parameters too: the checkpoint's model
                for i, v in zip(shard, local.get("values", ())):  # (its state_dict shares these tensors' storage)
                    self.params[i].copy_(v)
            group = group or local["param_groups"][0]
        return {"state": {i: state[i] for i in sorted(state)},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def command(self, shard: int, cmd: float) -> None:
        """Send server ``shard`` a command (CMD_STATE, CMD_STOP) on the channel its protocol listens to."""
        if self.asynchronous:
            msg = torch.zeros(ASYNC_HEADER + self.numel[shard], dtype=self.params[0].dtype, device=self.params[0].device)
            msg[0] = cmd
            dist.isend(msg, self.roles.server_rank(shard), TAG_ASYNC).wait()
        else:
            dist.isend(torch.tensor([cmd, 0.0], dtype=torch.float64), self.roles.server_rank(shard), TAG_CMD).wait()

    def load_state_dict(self, state: dict) -> None:
        raise RuntimeError("WorkerOptimizer: load the wrapped optimizer before attach()")


def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, info: dist.DistInfo) -> WorkerOptimizer:
    """On a worker (inside :func:`run`): hand the model's trainable parameters and ``optimizer``'s state to the
    servers; returns the optimizer the training loop uses instead."""
    params = [p for p in model.parameters() if p.requires_grad]
    roles = Roles(info.world_size + cfg.ps_servers, cfg.ps_servers)
    wopt = WorkerOptimizer(optimizer, params, roles, info.rank, cfg.ps_staleness)
    global _WORKER
    _WORKER = wopt
    if info.is_main:
        sizes = [sum(_nbytes(params[i]) for i in shard) / 1e6 for shard in wopt.shards]
        _say("parameter shards: " + ", ".join(f"server {s} (rank {roles.server_rank(s)}): {len(sh)} tensors, "
                                              f"{mb:.2f} MB" for s, (sh, mb) in enumerate(zip(wopt.shards, sizes))))
    wopt.attach()
    return wopt


# --------------------------------------------------------------------------------------------- the server


def serve(cfg, roles: Roles, rank: int, device: torch.device, servers_group) -> dict:
    """Hold parameter shard ``rank - workers`` and its optimizer; answer the workers' steps until told to stop."""
    from chexnet.optim import build_optimizer

    shard_id = rank - roles.workers
    init = dist.recv_object(0)
    params = [torch.nn.Parameter(v.to(device)) for v in init["values"]]
    opt = build_optimizer(params, cfg, float(init["group"]["lr"]))
    opt.load_state_dict({"state": init["state"], "param_groups": [{**init["group"],
                                                                   "params": list(range(len(params)))}]})
    numel = sum(p.numel() for p in params)
    dtype = params[0].dtype if params else torch.float32
    workers = range(roles.workers)

    def reply(flag: float) -> None:
        flat = torch.cat([torch.tensor([flag], dtype=dtype, device=device)]
                         + [p.detach().reshape(-1) for p in params])
        dist.wait_all([dist.isend(flat, w, TAG_PARAM) for w in workers])
        TRAFFIC.bytes_sent += _nbytes(flat) * roles.workers

    reply(1.0)
    TRAFFIC.__init__()  # the counters are the steps': the hand-over is not one
    if cfg.ps_staleness >= 0:
        return _serve_async(cfg, roles, shard_id, opt, params, init, numel, dtype, device)
    header = torch.empty(2, dtype=torch.float64)
    steps = skipped = 0
    while True:
        dist.recv(header, 0, TAG_CMD)
        cmd = float(header[0])
        if cmd == CMD_STOP:
            break
        if cmd == CMD_STATE:
            dist.send_object(opt.state_dict(), 0)
            continue
        grads = [torch.empty(numel, dtype=dtype, device=device) for _ in workers]
        t0 = time.perf_counter()
        dist.wait_all([dist.irecv(g, w, TAG_GRAD) for w, g in zip(workers, grads)])
        TRAFFIC.comm_seconds += time.perf_counter() - t0
        TRAFFIC.bytes_received += sum(_nbytes(g) for g in grads)
        total = grads[0]
        for g in grads[1:]:
            total = total + g
        total = total / roles.workers
        offset = 0
        for p in params:
            p.grad = total[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        applied = _apply(opt, params, init["indices"], init["n_params"], cfg, float(header[1]), roles, servers_group)
        skipped += not applied
        steps += 1
        TRAFFIC.steps += 1
        reply(1.0 if applied else 0.0)
    return {"shard": shard_id, "steps": steps, "skipped": skipped, "tensors": len(params), "numel": numel}


def _apply(opt, params, indices, n_params: int, cfg, lr: float, roles: Roles, servers_group) -> bool:
    """Clip by the global norm (over all servers' shards), skip a non-finite step where asked, apply the optimizer
    at ``lr`` -- chexnet.engine.optimizer_step's policy, over the averaged gradient."""
    for group in opt.param_groups:
        group["lr"] = lr
    if cfg.grad_clip > 0 or cfg.skip_nonfinite:
        # torch's clip_grad_norm_ over all parameters, bit for bit: every tensor's norm, placed at its index in
        # the whole model's parameter list (the other servers' entries summed in: exact, as each index has one
        # non-zero), then the norm of that vector
        norms = torch.zeros(n_params, dtype=params[0].dtype, device=params[0].device)
        if params:
            norms[torch.tensor(indices, device=norms.device)] = torch.stack(torch._foreach_norm([p.grad for p in params], 2.0))
        if roles.servers > 1:
            norms = dist.all_reduce_sum(norms, group=servers_group)
        total = torch.linalg.vector_norm(norms, 2.0)
        if cfg.skip_nonfinite and not bool(torch.isfinite(total)):
            return False
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, total)
    opt.step()
    return True


def _serve_async(cfg, roles: Roles, shard_id: int, opt, params, init, numel: int, dtype, device) -> dict:
    """Asynchronous serving with bounded staleness: each worker's gradient is applied as it arrives (one optimizer
    step per gradient, not averaged), and the worker gets the updated shard back only once it is at most
    ``cfg.ps_staleness`` steps ahead of the slowest worker. Records, per applied gradient, how far its worker was
    ahead of the slowest when it was let go on (``ahead``) and how many updates from other workers its parameters
    missed (``stale``). Ends when every worker has said stop."""
    bound = cfg.ps_staleness
    msg = torch.empty(ASYNC_HEADER + numel, dtype=dtype, device=device)
    done = {w: 0 for w in range(roles.workers)}  # gradients applied per worker still running
    pulled_at = {w: 0 for w in done}  # the server's version when each worker last got the parameters
    waiting: dict[int, dict] = {}  # worker -> its latest record, while the bound holds its reply back
    applied_flag: dict[int, bool] = {}
    version, records = 0, []

    def reply(w: int, flag: float) -> None:
        flat = torch.cat([torch.tensor([flag], dtype=dtype, device=device)] + [p.detach().reshape(-1) for p in params])
        dist.isend(flat, w, TAG_PARAM).wait()
        TRAFFIC.bytes_sent += _nbytes(flat)
        pulled_at[w] = version

    while done:
        w = dist.recv_any(msg, TAG_ASYNC)  # a waiting worker blocks nobody else: the slowest always gets through
        cmd = float(msg[0])
        if cmd == CMD_STOP:
            done.pop(w)  # a finished worker no longer holds the others back
        elif cmd == CMD_STATE:  # with the newest parameters: rank 0's copy may lack other workers' updates
            dist.send_object({**opt.state_dict(), "values": [p.detach().cpu() for p in params]}, 0)
        else:
            TRAFFIC.bytes_received += _nbytes(msg)
            offset = ASYNC_HEADER
            for p in params:
                p.grad = msg[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            applied_flag[w] = _apply(opt, params, init["indices"], init["n_params"], cfg, float(msg[1]), roles, None)
            record = {"worker": w, "step": int(msg[2]), "stale": version - pulled_at[w]}
            records.append(record)
            version += 1
            done[w] += 1
            TRAFFIC.steps += 1
            waiting[w] = record
        for v in list(waiting):
            ahead = done[v] - min(done.values())
            if ahead <= bound:
                waiting.pop(v)["ahead"] = ahead
                reply(v, 1.0 if applied_flag[v] else 0.0)
    return {"shard": shard_id, "steps": version, "skipped": sum(not f for f in applied_flag.values()),
            "tensors": len(params), "numel": numel, "staleness_bound": bound,
            "max_ahead": max((r.get("ahead", 0) for r in records), default=0),
            "max_stale": max((r["stale"] for r in records), default=0), "records": records}
