"""``--strategy ps`` (chexnet.ps) with REAL gloo process groups: synchronous parameter servers train what DDP
trains (weights and optimizer state after the same steps equal to 1e-5), with 1 and 2 servers, gradient
clipping by the global norm across servers, mid-epoch checkpoints; a PS checkpoint resumes under all-reduce
and gives the weights of an all-reduce run straight through; the configuration errors name what is wrong.

Processes are started with ``torch.multiprocessing.spawn`` and MASTER_ADDR/PORT (as torchrun sets them); they
call the real ``chexnet.train.train``. Nothing of torch.distributed is faked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from chexnet.checkpoint import load_checkpoint
from chexnet.config import ConfigError
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(300)

WORKERS = 2
RUN = dict(epochs=1, max_steps_per_epoch=3, checkpoint_every=1, grad_clip=0.05)  # clipping active (tiny grads ~1)


def _rank(rank: int, world: int, port: int, cache: str, run: str, cfg_dict: dict, resume, out: str,
          slow_rank: int | None = None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import chexnet.train as T
    from chexnet.config import config_from_dict

    if rank == slow_rank:  # a slow worker: every step's gradients take 0.25 s longer
        import time

        import chexnet.engine as E

        real = E._accumulate_gradients

        def slow(*args, **kwargs):
            time.sleep(0.25)
            return real(*args, **kwargs)

        E._accumulate_gradients = slow

    summary = T.train(config_from_dict(cfg_dict), cache, run, resume=resume, progress=False)
    Path(out, f"rank{rank}.json").write_text(json.dumps({k: summary.get(k) for k in
                                                         ("world_size", "strategy", "role", "traffic", "steps",
                                                          "shard", "global_step", "max_ahead", "max_stale",
                                                          "records", "staleness_bound")}, default=str))


def _spawn(world: int, cache, run: Path, cfg, resume=None, slow_rank=None) -> list[dict]:
    import torch.multiprocessing as mp

    out = run.parent / f"{run.name}-summaries"
    out.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        # forked, not spawned: the children inherit the imported torch and chexnet (seconds saved per process)
        mp.start_processes(_rank, args=(world, free_port(), str(cache), str(run), cfg.to_dict(), resume, str(out),
                                        slow_rank),
                           nprocs=world, join=True, start_method="fork")
    finally:
        os.environ.pop("OMP_NUM_THREADS", None) if old is None else os.environ.__setitem__("OMP_NUM_THREADS", old)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def assert_close_state(a: dict, b: dict, what: str, tol: float = 1e-5) -> None:
    """Model parameters and buffers, and the optimizer state, equal to ``tol``; the same steps and LR state."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        va, vb = a["model"][k], b["model"][k]
        if va.is_floating_point():
            torch.testing.assert_close(va, vb, rtol=0, atol=tol, msg=lambda m: f"{what}: model tensor {k}: {m}")
        else:
            assert torch.equal(va, vb), f"{what}: model tensor {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sorted(sa) == sorted(sb), f"{what}: optimizer state for other parameters"
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            torch.testing.assert_close(sa[i][k].double(), sb[i][k].double(), rtol=0, atol=tol,
                                       msg=lambda m: f"{what}: optimizer state {i}.{k}: {m}")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr"] == b["lr"]
    assert (a["epoch"], a["step_in_epoch"], a["global_step"]) == (b["epoch"], b["step_in_epoch"], b["global_step"])
    assert a["world_size"] == b["world_size"] == WORKERS


@pytest.fixture(scope="module")
def ddp_reference(tiny_cache, tiny_cfg, tmp_path_factory):
    """Two all-reduce (DDP) processes, 3 steps with gradient clipping: the weights PS must reproduce."""
    run = tmp_path_factory.mktemp("ps_ref") / "run"
    _spawn(WORKERS, tiny_cache, run, tiny_cfg(**RUN))
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.mark.slow  # 4 short multi-process runs, ~60 s on 2 cores in all
def test_sync_ps_with_two_servers_equals_ddp(ddp_reference, tiny_cache, tiny_cfg, tmp_path):
    """4 processes, 2 of them servers (the gradient norm for clipping all-reduced between them) == 2 DDP ranks."""
    run = tmp_path / "run"
    summaries = _spawn(WORKERS + 2, tiny_cache, run, tiny_cfg(**RUN, strategy="ps", ps_servers=2))
    assert [s["role"] for s in summaries] == ["worker 0 of 2 (data shard 0)", "worker 1 of 2 (data shard 1)",
                                              "server 0 of 2 (parameter shard 0)", "server 1 of 2 (parameter shard 1)"]
    assert summaries[0]["world_size"] == WORKERS, "the training code's world is the workers"
    assert [s["steps"] for s in summaries[2:]] == [3, 3], "each server applied every step"
    assert all(s["traffic"]["bytes_sent_per_step"] > 0 and s["traffic"]["bytes_received_per_step"] > 0
               for s in summaries)
    assert_close_state(load_checkpoint(run / "checkpoints" / "last.pt"), ddp_reference, "PS (2 servers) vs DDP")
    from chexnet.models import create_model

    best = load_checkpoint(run / "checkpoints" / "best.pt")  # an ordinary checkpoint: what evaluate loads
    create_model(tiny_cfg().arch, "none").load_state_dict(best["model"])  # strict


@pytest.mark.slow
def test_sync_ps_with_one_server_equals_ddp_and_resumes_under_allreduce(ddp_reference, tiny_cache, tiny_cfg,
                                                                         tmp_path):
    """3 processes, 1 server == 2 DDP ranks; then its mid-epoch checkpoint (after step 2 of 3), resumed by 2
    all-reduce processes, ends with the weights of the all-reduce run straight through."""
    run = tmp_path / "run"
    summaries = _spawn(WORKERS + 1, tiny_cache, run, tiny_cfg(**RUN, strategy="ps", ps_servers=1))
    assert summaries[2]["role"] == "server 0 of 1 (parameter shard 0)" and summaries[2]["steps"] == 3
    assert_close_state(load_checkpoint(run / "checkpoints" / "last.pt"), ddp_reference, "PS (1 server) vs DDP")
    mid = tmp_path / "mid.pt"
    shutil.copyfile(run / "checkpoints" / "last.prev.pt", mid)
    state = load_checkpoint(mid)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2) and state["config"]["strategy"] == "ps"
    assert state["world_size"] == WORKERS
    _spawn(WORKERS, tiny_cache, run, tiny_cfg(**RUN, strategy="allreduce"), resume=str(mid))
    assert_close_state(load_checkpoint(run / "checkpoints" / "last.pt"), ddp_reference,
                       "PS checkpoint resumed under all-reduce vs DDP straight")


@pytest.mark.slow
def test_async_ps_respects_the_staleness_bound_and_learns(tiny_cache, tiny_cfg, tmp_path):
    """--ps-staleness 1: 2 workers (worker 1 slowed down) + 1 server, gradients applied as they arrive. The fast
    worker runs ahead, never by more than 1 step (recorded per applied gradient), and the train loss falls."""
    from chexnet.runlog import read_metrics

    run = tmp_path / "run"
    cfg = tiny_cfg(epochs=3, max_steps_per_epoch=4, log_every=100, strategy="ps", ps_servers=1, ps_staleness=1)
    summaries = _spawn(WORKERS + 1, tiny_cache, run, cfg, slow_rank=1)
    server = summaries[2]
    assert server["staleness_bound"] == 1 and server["steps"] == 2 * 3 * 4, "every worker's every gradient applied"
    aheads = [r["ahead"] for r in server["records"]]
    assert len(aheads) == 24 and max(aheads) <= 1, aheads
    assert 1 in aheads and server["max_stale"] >= 1, "the fast worker never ran ahead: the test shows nothing"
    losses = [r["train_loss"] for r in read_metrics(run) if r["kind"] == "epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    load_checkpoint(run / "checkpoints" / "last.pt")  # an ordinary checkpoint, its optimizer gathered


# ------------------------------------------------------------------------------------------ configuration


def test_config_errors_are_named(tiny_cfg):
    from chexnet import ps

    ps.check(tiny_cfg(), 1)  # allreduce: nothing to check
    ps.check(tiny_cfg(strategy="ps", ps_servers=1), 2)
    cases = [(dict(ps_servers=2), 2, "--ps-servers 2 with 2 process(es): at least one process must be a worker"),
             (dict(ps_servers=3), 2, "--ps-servers 3 with 2"),
             (dict(ps_servers=0), 4, "--ps-servers 0: --strategy ps needs at least one server"),
             (dict(ps_servers=1), 1, "at least one process must be a worker"),
             (dict(ps_servers=1, precision="fp16"), 3, "--precision fp16"),
             (dict(ps_servers=1, grad_compression="bf16"), 3, "--grad-compression bf16"),
             (dict(ps_servers=1, ps_staleness=-2), 3, "--ps-staleness -2"),
             (dict(ps_servers=2, ps_staleness=0, grad_clip=1.0), 4, "the global gradient norm needs every server")]
    for overrides, world, text in cases:
        with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
            ps.check(dataclasses.replace(tiny_cfg(strategy="ps"), **overrides), world)
    with pytest.raises(ConfigError, match="strategy"):
        tiny_cfg(strategy="gossip")


def test_the_cli_refuses_too_many_servers_before_starting_processes(tiny_cache, tmp_path, capsys):
    from chexnet import cli

    code = cli.main(["train", "--cache", str(tiny_cache), "--out", str(tmp_path / "run"), "--nproc", "2",
                     "--strategy", "ps", "--ps-servers", "2", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--strategy ps --ps-servers 2 with 2 process(es)" in err and "--nproc 3 or more" in err
    assert not (tmp_path / "run").exists(), "no process was started"


def test_shards_are_balanced_by_bytes():
    from chexnet import ps

    owners = ps.shard_owners([100, 60, 50, 40, 10, 5], 2)
    loads = [sum(b for b, o in zip([100, 60, 50, 40, 10, 5], owners) if o == s) for s in range(2)]
    assert loads == [140, 125]  # 100 | 60, 50 | 40 (s0: 140) | 10, 5 (s1: 125)
    assert ps.shard_owners([8, 8, 8], 3) == [0, 1, 2]
    assert ps.shard_owners([4], 1) == [0]


def test_a_lost_rank_is_named_with_its_role():
    from chexnet import dist, ps

    roles = ps.Roles(4, 2)
    dist.set_roles({r: roles.describe(r) for r in range(4)})
    try:
        assert dist.describe_rank(3).endswith(", server 1 of 2 (parameter shard 1))")
        assert "worker 0 of 2 (data shard 0)" in dist.describe_rank(0)
    finally:
        dist.teardown()
    assert "server" not in dist.describe_rank(3)
