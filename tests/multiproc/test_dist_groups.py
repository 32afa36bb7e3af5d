"""The Horovod steps with REAL 2-process gloo groups on the CPU (no mocks of torch.distributed).

One ``torch.multiprocessing.spawn`` of two ranks runs every check below (imports cost more than the checks);
each rank records its findings, and each test asserts on them. The ranks join the group through
``chexnet.dist.init()`` exactly as under torchrun (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT).

* broadcast: models built with different seeds per rank are identical after ``wrap_ddp`` (checksums);
* gradient averaging: DDP's gradients are the mean of the per-rank gradients, with no hook and with the
  bf16 / fp16 compression hooks, and the parameters stay identical on every rank after an optimizer step;
* metric averaging: the training loss ``train_one_epoch`` logs is the mean over ranks (and steps);
  ``predict_distributed`` equals a one-process prediction over the whole set;
* the small helpers: all_reduce_mean/sum, all_gather_objects, broadcast_object, broadcast_buffers,
  rank_zero_first.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from pathlib import Path


import numpy as np
import pytest
import torch
from tests.helpers import free_port

WORLD = 2


def _checksum(module: torch.nn.Module, buffers: bool = False) -> list[float]:
    tensors = list(module.parameters()) + (list(module.buffers()) if buffers else [])
    return [float(t.detach().double().sum()) + float((t.detach().double() ** 2).sum()) for t in tensors]


def _check(results: dict, name: str, fn) -> None:
    try:
        results[name] = {"ok": True, "value": fn()}
    except Exception:
        results[name] = {"ok": False, "error": traceback.format_exc()}


def _batch(seed: int, n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = (torch.rand(n, 14, generator=g) < 0.3).float()
    return x, y


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from chexnet import dist
    from chexnet.data.dataset import CacheDataset
    from chexnet.preprocess import input_transform
    from chexnet.engine import StepContext, predict_dataset, predict_distributed, train_one_epoch
    from chexnet.models import create_model

    info, device = dist.init(timeout_s=120)
    results: dict = {"info": [info.rank, info.world_size, info.local_rank, info.launcher, str(device)]}

    def gather(value):
        return dist.all_gather_objects(value)

    # 1. broadcast: different initial weights per rank before DDP, identical after
    def broadcast():
        torch.manual_seed(1000 + rank)
        model = create_model("resnet18", "none")
        with torch.no_grad():  # make the buffers differ too (BatchNorm running stats)
            for b in model.buffers():
                if b.dtype.is_floating_point:
                    b.add_(rank + 1)
        before = gather(_checksum(model, buffers=True))
        ddp = dist.wrap_ddp(model, device)
        after = gather(_checksum(ddp.module, buffers=True))
        return {"before_differ": before[0] != before[1], "after_equal": after[0] == after[1],
                "is_ddp": type(ddp).__name__}

    _check(results, "broadcast", broadcast)

    # 2. gradient averaging, with and without compression hooks
    def grads(compression):
        def run():
            torch.manual_seed(7)
            model = create_model("resnet18", "none")
            local = copy.deepcopy(model)
            ddp = dist.wrap_ddp(model, device, compression)
            x, y = _batch(100 + rank)  # different data on every rank
            inputs = input_transform(None)(x)
            crit = torch.nn.BCEWithLogitsLoss()
            crit(ddp(inputs), y).backward()
            crit(local(inputs), y).backward()
            mine = [p.grad.detach().clone() for p in local.parameters()]
            everyone = gather(mine)
            mean = [(a + b) / 2 for a, b in zip(*everyone)]
            ddp_grads = [p.grad.detach() for p in ddp.module.parameters()]
            err = max(float((g - m).abs().max() / (m.abs().max() + 1e-12)) for g, m in zip(ddp_grads, mean))
            # (max |error|, the largest |gradient| of any rank): the hook rounds the ranks' values, not their mean
            per_tensor = [[float((g - m).abs().max()), max(float(a.abs().max()), float(b.abs().max()))]
                          for g, m, a, b in zip(ddp_grads, mean, *everyone)]
            # not merely the local gradient: the ranks' gradients differ, DDP's is their mean
            local_err = max(float((g - m).abs().max() / (m.abs().max() + 1e-12)) for g, m in zip(ddp_grads, mine))
            opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
            opt.step()
            sums = gather(_checksum(ddp.module))
            return {"rel_err_vs_mean": err, "rel_err_vs_local": local_err, "params_equal": sums[0] == sums[1],
                    "per_tensor": per_tensor}

        return run

    for c in ("none", "bf16", "fp16"):
        _check(results, f"grads_{c}", grads(c))

    # 3a. the logged training loss is the mean over ranks and steps
    def train_loss():
        torch.manual_seed(3)
        model = create_model("resnet18", "none")
        ddp = dist.wrap_ddp(model, device)
        batches = [_batch(200 + 10 * rank + s) for s in range(2)]
        loader = list(batches)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.0)  # weights stay put: local losses can be recomputed

        class FixedLR:
            def set_step(self, step):
                return 0.0

        logs = []
        result = train_one_epoch(ddp, loader, opt, torch.nn.BCEWithLogitsLoss(), FixedLR(), None,
                                 StepContext(device, log_every=2), epoch=0, global_step=0, steps=2,
                                 on_log=logs.append)
        model.train()
        with torch.no_grad():
            local = [float(torch.nn.functional.binary_cross_entropy_with_logits(model(input_transform(None)(x)), y))
                     for x, y in batches]
        per_rank = gather(float(np.mean(local)))
        return {"logged": [r["loss"] for r in logs], "epoch_loss": result["loss"], "per_rank": per_rank}

    _check(results, "train_loss", train_loss)

    # 3b. distributed prediction == one process over the whole set (odd size: uneven shards)
    def prediction():
        n, size = 11, 40
        rng = np.random.default_rng(5)
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        path = Path(out) / "images.u8"
        if info.is_main:
            images.tofile(path)
        dist.barrier()
        labels = (rng.random((n, 14)) < 0.3).astype(np.float32)
        ds = CacheDataset(path, n, size, labels, input_size=32, mode="eval")
        torch.manual_seed(11)
        model = create_model("resnet18", "none").eval()
        ctx = StepContext(device)
        # batch size 1 for the references (and the shards): every row goes through the same computation in both,
        # equal by construction; batches of other shapes may differ by a few ulps (other kernels, other sums)
        full = predict_distributed(model, ds, info, ctx, batch_size=1)
        single = predict_dataset(model, ds, range(n), ctx, batch_size=1)
        one_row = CacheDataset(path, n, size, labels[:1], rows=[0], input_size=32, mode="eval")  # rank 1 gets no row
        tiny = predict_distributed(model, one_row, info, ctx, batch_size=4)  # a batch of its one row, as single's
        return {"shape": list(full.shape), "max_abs_diff": float(np.abs(full - single).max()),
                "tiny_shape": list(tiny.shape), "tiny_diff": float(np.abs(tiny[0] - single[0]).max())}

    _check(results, "prediction", prediction)

    # 4. the small helpers
    def helpers():
        t = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
        mean, total = dist.all_reduce_mean(t), dist.all_reduce_sum(t)
        untouched = t.tolist()
        gathered = dist.all_gather_objects({"rank": rank})
        obj = dist.broadcast_object({"from": rank}, src=0)
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank + 5))
        dist.broadcast_buffers(bn)
        order = []
        marker = Path(out) / "rank_zero_first.txt"
        with dist.rank_zero_first(info):
            if info.is_main:
                import time

                time.sleep(0.5)
                marker.write_text("written by rank 0")
            order.append(marker.is_file())
        return {"mean": mean.tolist(), "sum": total.tolist(), "untouched": untouched,
                "gathered": [g["rank"] for g in gathered], "broadcast": obj["from"],
                "bn_mean": bn.running_mean.tolist(), "saw_rank0_file": order[0]}

    _check(results, "helpers", helpers)

    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.teardown()


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("groups")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _value(results, rank, name):
    entry = results[rank][name]
    assert entry["ok"], f"rank {rank}, check {name} raised:\n{entry['error']}"
    return entry["value"]


pytestmark = pytest.mark.timeout(300)


def test_ranks_join_a_gloo_group_through_dist_init(group_results):
    for r in range(WORLD):
        assert group_results[r]["info"] == [r, WORLD, r, "torchrun", "cpu"]


def test_broadcast_gives_identical_initial_weights(group_results):
    for r in range(WORLD):
        v = _value(group_results, r, "broadcast")
        assert v["is_ddp"] == "DistributedDataParallel"
        assert v["before_differ"], "the ranks' models were meant to start different"
        assert v["after_equal"], "parameter/buffer checksums differ across ranks after wrap_ddp"


# Each tensor's DDP gradient is within ``tol`` x the largest |gradient| of any rank + ``atol`` of the ranks' mean.
# The hook's three roundings (cast, halving, the sum) cost at most 2**-8 (bf16) or 2**-11 (fp16) relative to the
# values rounded, inside ``tol``; fp16 also has a floor: below 2**-14 its values are subnormal, spaced 2**-24 apart
# whatever their size, so a tensor of tiny gradients is off by up to ~1.5 x 2**-24 absolute, any fraction of its
# own maximum. bf16 keeps fp32's exponent range (no such floor); no compression is fp32 all the way.
@pytest.mark.parametrize("compression,tol,atol", [("none", 1e-5, 0.0), ("bf16", 2e-2, 0.0), ("fp16", 2e-3, 2**-22)])
def test_gradients_are_averaged_and_params_stay_identical(group_results, compression, tol, atol):
    for r in range(WORLD):
        v = _value(group_results, r, f"grads_{compression}")
        off = [(i, d, m) for i, (d, m) in enumerate(v["per_tensor"]) if not d <= tol * m + atol]
        assert not off, f"(tensor, max |error|, max |mean|) over tol {tol} + atol {atol}: {off}"
        if compression != "none":
            assert v["rel_err_vs_mean"] > 0, f"gradients are exact: the {compression} compression hook is not active"
        assert v["rel_err_vs_local"] > 10 * tol, "DDP gradient equals the local one: no averaging happened"
        assert v["params_equal"], f"parameters differ across ranks after a step ({compression} hook)"


def test_logged_train_loss_is_mean_over_ranks(group_results):
    v0, v1 = (_value(group_results, r, "train_loss") for r in range(WORLD))
    expected = float(np.mean(v0["per_rank"]))
    assert v0["per_rank"][0] != pytest.approx(v0["per_rank"][1], rel=1e-3), "ranks were meant to see different losses"
    for v in (v0, v1):
        assert len(v["logged"]) == 1
        assert v["logged"][0] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert v["epoch_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_distributed_prediction_equals_one_process(group_results):
    for r in range(WORLD):
        v = _value(group_results, r, "prediction")
        assert v["shape"] == [11, 14]
        assert v["max_abs_diff"] <= 1e-6
        assert v["tiny_shape"] == [1, 14] and v["tiny_diff"] <= 1e-6  # more ranks than rows


def test_reduce_gather_broadcast_helpers(group_results):
    for r in range(WORLD):
        v = _value(group_results, r, "helpers")
        assert v["mean"] == [1.5, 15.0]
        assert v["sum"] == [3.0, 30.0]
        assert v["untouched"] == [float(r + 1), 10.0 * (r + 1)], "all_reduce_* must not modify its input"
        assert v["gathered"] == [0, 1]
        assert v["broadcast"] == 0
        assert v["bn_mean"] == [5.0, 5.0, 5.0]
        assert v["saw_rank0_file"], "rank_zero_first: rank 1 entered before rank 0 finished"
