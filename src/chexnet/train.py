"""One training run: build everything, loop over epochs, validate, checkpoint, log.

Single process::

    chexnet train --cache cache/nih-256 --out runs/r1 --config chexnet

N local processes (torch elastic, as torchrun; ``--max-restarts`` restarts failed groups from last.pt)::

    chexnet train --cache cache/nih-256 --out runs/r1 --config chexnet --nproc 4

Many nodes -- the same command under any launcher (see chexnet.dist for the environments read; README, "Scaling
out", for binding, threads, timeouts and elastic restarts)::

    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id r1 -m chexnet train ...
    mpirun -np 2 chexnet train ...                                   # one host: nothing to export
    mpirun -np 64 --hostfile hosts -x MASTER_ADDR=HOST -x PATH -x PYTHONPATH chexnet train ...
    srun --ntasks 64 chexnet train ...
    chexnet train --launcher spark --spark-master spark://HOST:7077 --nproc 16 ...   # Spark executors

A lost peer fails the run within ``--dist-timeout`` seconds with an error naming it; under torch elastic the
group restarts from the newest complete checkpoint (also when nodes join or leave), the LR following the new
world size.

The Keras + Horovod report's five steps map to: dist.init (init), DDP construction (broadcast from rank 0),
DDP's bucketed all-reduce (DistributedOptimizer), dist.all_reduce_sum / predict_distributed (metric
averaging), and rank-0-only atomic checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from chexnet import dist
from chexnet.checkpoint import (
    PREVIOUS,
    CheckpointError,
    CheckpointSaver,
    checkpoint_dir,
    ckpt_batch_layout,
    ckpt_cache_size,
    ckpt_rng_state,
    ckpt_scaler_state,
    ckpt_selection,
    ckpt_world_size,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    set_rng_state,
    training_state,
    versions,
    weights_sha256,
)
from chexnet.config import TrainConfig, build_config, config_from_dict, save_config
from chexnet.data.cache import cache_labels, index_sha256, load_cache
from chexnet.data.combine import row_sources
from chexnet.data.dataset import SkipSampler, SourceBalancedSampler, open_split
from chexnet.engine import StepContext, predict_distributed, train_one_epoch
from chexnet.fileio import atomic_write
from chexnet.choices import LOSS_WEIGHTINGS, SELECT_RULES
from chexnet.losses import build_criterion, loss_from_probs
from chexnet.metrics import auroc
from chexnet.models import create_model
from chexnet.optim import LRController, build_optimizer, scaled_lr
from chexnet.preprocess import Preprocessing, input_transform
from chexnet.runlog import RunLogger

COMPATIBLE_FIELDS = ("arch", "labels", "input_size", "input_transform")


class ResumeError(ValueError):
    pass


def check_compatible(ckpt: dict, cfg: TrainConfig, spec: Preprocessing, path) -> None:
    """Refuse to resume a checkpoint whose architecture, label set or input preprocessing differs from this run's."""
    saved, now = config_from_dict(ckpt["config"]).to_dict(), cfg.to_dict()
    diffs = [f"{k}: checkpoint has {saved[k]!r}, this run has {now[k]!r}" for k in COMPATIBLE_FIELDS if saved[k] != now[k]]
    cache_size = ckpt_cache_size(ckpt)
    if cache_size is not None and cache_size != spec.cache_size:
        diffs.append(f"cache images: checkpoint trained on {cache_size} px, this cache has {spec.cache_size} px")
    if diffs:
        raise ResumeError(f"cannot resume from {path}: incompatible config ({'; '.join(diffs)})")


def _say(info: dist.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def _elastic_continuation(run: Path) -> bool:
    """True when torch elastic restarted this job's workers into ``run``: after a failure (the restart count),
    or after nodes joined or left an elastic (``--nnodes MIN:MAX``) job, which torch elastic does not count as
    a restart; that is recognised by the job's rendezvous id, recorded in run.json by the earlier attempt."""
    if dist.restart_count() > 0:
        return True
    run_id = dist.elastic_run_id()
    if run_id is None:
        return False
    try:
        return json.loads((run / "run.json").read_text()).get("elastic_run_id") == run_id
    except (OSError, ValueError):
        return False


def _resume(run: Path, resume: str | None, info: dist.DistInfo) -> tuple[Path | None, dict | None]:
    """(path, state) of the checkpoint to continue from, or (None, None) for a fresh start."""
    last = checkpoint_dir(run) / "last.pt"
    # rank 0 decides for all (the other ranks do not read): it rewrites run.json (with the new elastic run id)
    # right after this, and a slower rank reading it then would take another branch and resume from another checkpoint
    if dist.broadcast_object(info.is_main and last.is_file() and _elastic_continuation(run)):
        return _newest_valid(run, "a torch elastic restart", info)  # continue from this run's newest state
    if resume is None:
        return None, None
    if resume == "auto":
        return _newest_valid(run, "--resume auto", info)
    try:
        path = resolve_checkpoint(run, resume)  # "last", "best" or a PATH
    except FileNotFoundError as exc:
        raise ResumeError(f"--resume {resume}: {exc}") from None
    return path, load_checkpoint(path)


def _newest_valid(run: Path, why: str, info: dist.DistInfo) -> tuple[Path | None, dict | None]:
    """last.pt, or last.prev.pt where last.pt is damaged (said on stderr); (None, None) where neither exists; a
    ResumeError naming each file's fault where both are damaged. Every rank reads the same files, so every rank
    comes to the same answer."""
    problems = []
    for path in (checkpoint_dir(run) / "last.pt", checkpoint_dir(run) / PREVIOUS):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            _say(info, f"warning: {why}: {exc}; trying the checkpoint before it")
            continue
        if problems:
            _say(info, f"{why}: continuing from {path} (epoch {state.get('epoch')}, step {state.get('global_step')})")
        return path, state
    if problems:
        raise ResumeError(f"{why}: no checkpoint of {run} loads: " + "; ".join(problems))
    return None, None


EpochCallback = Callable[[dict], bool]


def train(cfg: TrainConfig, cache: str | os.PathLike, out: str | os.PathLike, resume: str | None = None,
          progress: bool = True, epoch_callback: EpochCallback | None = None) -> dict:
    """Train ``cfg`` on a prepared cache into run directory ``out``. Returns a summary (rank 0's view).

    ``epoch_callback(record)`` is called on rank 0 after each validation pass, once the epoch's checkpoints
    are written, with the epoch's metrics record (``epoch``, ``val_loss``, ``val_auroc_mean``, ...). Returning
    True stops the run after that epoch on every rank (the decision is broadcast), e.g. to prune a trial
    (chexnet.tune); the run then ends as a finished one would, its checkpoints intact and resumable.
    """
    info, device = dist.init(cfg.dist_timeout)
    try:
        with dist.naming_lost_peers(info):  # a lost peer fails the run with an error naming its rank and host
            if cfg.strategy == "ps":  # chexnet.ps: servers serve their shards, workers run _train among themselves
                from chexnet import ps

                return ps.run(cfg, info, device, lambda worker_info: _train(
                    cfg, Path(cache), Path(out), resume, progress, worker_info, device, epoch_callback))
            return _train(cfg, Path(cache), Path(out), resume, progress, info, device, epoch_callback)
    finally:
        dist.teardown()


def _ask_callback(callback: EpochCallback | None, record: dict, info: dist.DistInfo) -> bool:
    """Rank 0 asks ``callback`` whether to stop; every rank gets the same answer (or the same error)."""
    decision: bool | str = False
    if info.is_main and callback is not None:
        try:
            decision = bool(callback(record))
        except Exception as exc:  # the other ranks must not wait in the broadcast below for ever
            decision = f"epoch callback failed after epoch {record['epoch']}: {type(exc).__name__}: {exc}"
    decision = dist.broadcast_object(decision)
    if isinstance(decision, str):
        raise RuntimeError(decision)
    return decision


def _train(cfg, cache, run, resume, progress, info, device, epoch_callback=None) -> dict:
    t_start = time.time()
    cfg, precision_why = _resolve_precision(cfg, info, device)
    _, index, meta = load_cache(cache)
    check_trainable_labels(cache, index, meta, cfg.labels)
    spec = Preprocessing(cache_size=int(meta["size"]), input_size=cfg.input_size, input_transform=cfg.input_transform)
    resume_path, ckpt = _resume(run, resume, info)
    if ckpt is not None:
        check_compatible(ckpt, cfg, spec, resume_path)
    elif any((checkpoint_dir(run) / f).is_file() for f in ("last.pt", "best.pt")):
        raise ResumeError(f"{run} already holds checkpoints of another run: pass --resume to continue it, "
                          f"or choose a new --out")
    if info.is_main:
        checkpoint_dir(run).mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        atomic_write(run / "run.json", json.dumps({**_run_info(cfg, cache, meta, spec, info, device, run),
                                                   "precision": cfg.precision, "precision_why": precision_why},
                                                  indent=2))
    dist.barrier()

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    torch.manual_seed(cfg.seed)  # same initial weights everywhere; DDP also broadcasts rank 0's
    np.random.seed(cfg.seed)
    train_set, val_set = _open_splits(cache, index, meta, cfg)
    with dist.rank_zero_first(info):  # rank 0 downloads ImageNet weights once, the others read the cache
        model = create_model(cfg.arch, cfg.weights, len(cfg.labels), cfg.head_bias_init)
    torch.manual_seed(cfg.seed + info.rank)  # from here on each rank draws its own dropout / stochastic depth
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    sources = row_sources(meta)[train_set.rows]
    sampler, steps = _train_sampler(train_set, sources, cfg, info)
    lr, global_batch, rule = scaled_lr(cfg, info.world_size)
    criterion = build_criterion(train_set.labels, cfg.loss_weighting, names=cfg.labels).to(device)
    saver = CheckpointSaver(run, cfg.select)
    _say(info, f"chexnet train: {cfg.arch} on {device} x {info.world_size} ({info.launcher}), {torch.get_num_threads()} "
               f"thread(s) + {cfg.workers} loader process(es) per rank; "
               f"{len(train_set)} train / {len(val_set)} val images; input: {cfg.input_transform} {spec.cache_size} -> "
               f"{cfg.input_size} px; global batch {global_batch}; lr {cfg.lr:g} for batch {cfg.lr_reference_batch} -> "
               f"{lr:.4g} ({rule} scaling{f', warmup {cfg.warmup_epochs:g} epochs from {cfg.lr:g}' if cfg.warmup_epochs else ''}); "
               f"{steps} steps/epoch{_describe_sources(sources, cfg)}\nloss: {LOSS_WEIGHTINGS[cfg.loss_weighting]}; "
               f"best.pt: {saver.rule}")
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg, lr)
    lr_ctl = LRController(optimizer, cfg, lr, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")  # disabled: no-ops, state {}

    epoch, step_offset, global_step = 0, 0, 0
    if ckpt is not None:
        epoch, step_offset, global_step = _restore(ckpt, resume_path, cfg, info, model, optimizer, lr_ctl, scaler, saver)
        lr_ctl.resume_at(global_step, epoch, step_offset)  # schedules follow epochs when the world size changed

    if cfg.strategy == "ps":  # a worker: the servers (chexnet.ps) hold the parameters' shards and the optimizer
        from chexnet import ps

        optimizer = ps.attach(model, optimizer, cfg, info)
        ddp = model
    else:
        ddp = dist.wrap_ddp(model, device, cfg.grad_compression)
    net = torch.compile(ddp, mode=None if cfg.compile_mode == "default" else cfg.compile_mode) if cfg.compile else ddp
    ctx = StepContext(device, cfg.precision, cfg.channels_last, cfg.accum_steps, cfg.grad_clip, cfg.skip_nonfinite,
                      max(1, cfg.log_every), transform=input_transform(spec).to(device))
    logger = RunLogger(run, enabled=info.is_main)
    if ckpt is not None:
        logger.truncate_after(global_step)

    def save_last(epoch_, step_in_epoch, gstep, improved_=False):
        """Collective (every rank's RNG state is gathered); rank 0 writes last.pt, and best.pt when improved."""
        rngs = dist.all_gather_objects(rng_state())
        if info.is_main:
            saver.save(training_state(model, optimizer, lr_ctl, scaler, cfg, spec, epoch=epoch_,
                                      step_in_epoch=step_in_epoch, global_step=gstep, rng_per_rank=rngs,
                                      world_size=info.world_size), improved_)

    first_step_t0 = time.perf_counter() if cfg.compile else None

    def on_step(step_in_epoch, gstep):
        nonlocal first_step_t0
        if first_step_t0 is not None:  # torch.compile compiles on the first call: say what it cost, once
            seconds, first_step_t0 = time.perf_counter() - first_step_t0, None
            _say(info, f"torch.compile (mode {cfg.compile_mode}): the first training step took {seconds:.1f} s, "
                       f"compilation included (validation compiles once more, in eval mode)")
            logger.log({"kind": "compile", "step": gstep, "mode": cfg.compile_mode, "first_step_s": seconds})
        if cfg.checkpoint_every and gstep % cfg.checkpoint_every == 0 and step_in_epoch < steps:
            save_last(epoch, step_in_epoch, gstep)

    summary = {"epochs": []}
    while epoch < cfg.epochs:
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader = _epoch_loader(train_set, sampler, cfg, epoch, step_offset, device)
        result = train_one_epoch(net, loader, optimizer, criterion, lr_ctl, scaler, ctx, epoch=epoch,
                                 global_step=global_step, steps=steps, step_offset=step_offset,
                                 show_progress=progress and info.is_main, on_log=logger.log, on_step=on_step,
                                 sync_at=lambda g: bool(cfg.checkpoint_every) and g % cfg.checkpoint_every == 0)
        global_step, step_offset = result["global_step"], 0
        record = {"kind": "epoch", "epoch": epoch + 1, "step": global_step, "train_loss": result["loss"],
                  "img_per_s": result["img_per_s"], "lr": optimizer.param_groups[0]["lr"]}
        if len(val_set) and (epoch + 1) % cfg.eval_every == 0:
            record.update(_validate(model, val_set, criterion, lr_ctl, info, ctx, cfg))
            if info.is_main:
                record["best"] = saver.update(record[SELECT_RULES[cfg.select].metric])
        epoch += 1
        logger.log(record)
        save_last(epoch, 0, global_step, record.get("best", False))
        if info.is_main:
            _print_epoch(record, cfg, saver)
        summary["epochs"].append(record)
        if "val_loss" in record and _ask_callback(epoch_callback, record, info):  # every rank validated, or none
            summary["stopped_after_epoch"] = epoch
            _say(info, f"stopped after epoch {epoch}/{cfg.epochs} by the epoch callback")
            break
        dist.barrier()
    summary["weights_sha256"] = _compare_weights(model, info, logger, epoch, global_step)
    logger.close()
    summary.update({"run": str(run), "select": cfg.select, "best": saver.best, "global_step": global_step,
                    "seconds": time.time() - t_start, "world_size": info.world_size})
    return summary


def _resolve_precision(cfg: TrainConfig, info: dist.DistInfo, device) -> tuple[TrainConfig, str]:
    """``precision: auto`` -> fp32 or bf16 and ``channels_last: auto`` -> on or off (chexnet.precision), decided
    on rank 0 and broadcast so that every rank trains alike; said as the run's first lines. The config that is
    saved (config.yaml, checkpoints) holds the resolved values."""
    import dataclasses

    from chexnet.precision import resolve_both_here

    if "auto" not in (cfg.precision, cfg.channels_last):
        return cfg, "as requested"
    chosen = resolve_both_here(cfg.precision, cfg.channels_last, device) if info.is_main else None
    precision, why, channels_last, layout_why = dist.broadcast_object(chosen)  # one collective for both
    if cfg.precision == "auto":
        _say(info, f"precision auto -> {precision} ({why})")
        why = f"auto: {why}"
    if cfg.channels_last == "auto":
        _say(info, f"channels-last auto -> {'on' if channels_last else 'off'} ({layout_why})")
    return dataclasses.replace(cfg, precision=precision, channels_last=bool(channels_last)), why


def _open_splits(cache, index, meta, cfg):
    """The train split (augmented as the config says) and the val split (evaluated as at test time)."""
    train_set = open_split(cache, index=index, meta=meta, split="train", mode="train", input_size=cfg.input_size,
                           input_transform=cfg.input_transform, seed=cfg.seed, train_crop=cfg.train_crop,
                           hflip=cfg.hflip, labels=cfg.labels)
    val_set = open_split(cache, index=index, meta=meta, split="val", mode="eval", input_size=cfg.input_size,
                         input_transform=cfg.input_transform, labels=cfg.labels)
    if len(train_set) == 0:
        raise ValueError(f"{cache}: the train split is empty")
    return train_set, val_set


def check_trainable_labels(cache, index, meta, labels) -> None:
    """Every model label needs a known value somewhere in the train split (missing ones are masked out of the
    loss, but a label never known cannot be learned): an error naming those that have none."""
    train = index["split"].to_numpy() == "train"
    unknown = [n for n in labels if n not in index.columns or not index.loc[train, n].notna().any()]
    if unknown:
        raise ValueError(f"{cache}: label(s) {', '.join(unknown)} have no known value in the train split (the cache "
                         f"has {', '.join(cache_labels(meta))}): train on a cache that has them, or leave them out "
                         f"of the config's labels")


def _train_sampler(train_set, sources, cfg, info) -> tuple[DistributedSampler | SourceBalancedSampler, int]:
    """This rank's shard of the train split (``sources``: each item's source; balanced sampling where the config
    asks and there are several) and the number of optimizer steps per epoch."""
    if cfg.source_sampling == "balanced" and len(set(sources)) > 1:
        sampler = SourceBalancedSampler(sources, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
    else:
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
    steps = len(sampler) // cfg.batch_size // cfg.accum_steps
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"train split has {len(train_set)} images: too few for {info.world_size} process(es) x batch "
                         f"{cfg.batch_size} x accumulation {cfg.accum_steps}")
    return sampler, steps


def _describe_sources(sources, cfg) -> str:
    """'; sources: a 300, b 500 train images, sampled balanced' for a combined cache ('' for one source)."""
    names, counts = np.unique(np.asarray(sources, dtype=str), return_counts=True)
    if len(names) < 2:
        return ""
    return (f"; sources: {', '.join(f'{n} {c}' for n, c in zip(names, counts))} train images, sampled "
            f"{cfg.source_sampling}")


def _epoch_loader(train_set, sampler, cfg, epoch: int, step_offset: int, device) -> DataLoader:
    """The loader of one epoch, skipping the batches of the ``step_offset`` steps already done (mid-epoch resume)."""
    return DataLoader(train_set, batch_size=cfg.batch_size,
                      sampler=SkipSampler(sampler, step_offset * cfg.accum_steps * cfg.batch_size),
                      num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=True,
                      persistent_workers=False,  # own generator: loader seeding leaves the global RNG alone
                      generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


def _print_epoch(record: dict, cfg, saver: CheckpointSaver) -> None:
    """Rank 0's one line per epoch on stderr."""
    val = (f"val loss {record['val_loss']:.4f}, val mean AUROC {record['val_auroc_mean']:.4f}, "
           if "val_loss" in record else "")
    best = f" (best: {saver.describe()})" if record.get("best") else ""
    print(f"epoch {record['epoch']}/{cfg.epochs}: train loss {record['train_loss']:.4f}, {val}"
          f"{record['img_per_s']:.1f} img/s{best}", file=sys.stderr, flush=True)


def _compare_weights(model, info, logger, epoch: int, global_step: int) -> list[str]:
    """Every rank logs a checksum of its final parameters (its own line, on its own stderr); rank 0 checks
    that all ranks agree, as DDP promises, and records them in metrics.jsonl."""
    digest = weights_sha256(model)
    peer = dist.peers()[info.rank] if dist.peers() else {}
    where = f" ({peer.get('host')}, {peer.get('addr')})" if peer else ""
    print(f"chexnet: rank {info.rank}/{info.world_size}{where}: final weights sha256 {digest} "
          f"(epoch {epoch}, step {global_step})", file=sys.stderr, flush=True)
    digests = dist.all_gather_objects(digest)
    if info.is_main and info.distributed:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            print(f"warning: final weights differ between ranks: rank(s) {odd} differ from rank 0 (DDP keeps them "
                  f"equal; suspect a hardware fault or a non-deterministic collective)", file=sys.stderr, flush=True)
        else:
            print(f"chexnet: all {info.world_size} ranks hold identical final weights", file=sys.stderr, flush=True)
    logger.log({"kind": "weights", "epoch": epoch, "step": global_step, "world_size": info.world_size,
                "sha256": digests})
    return digests


def _run_info(cfg, cache, meta, spec, info, device, run: Path) -> dict:
    """run.json: what a moved run needs to be evaluated elsewhere and to check a cache against (a resumed run keeps
    the checkpoint digests it recorded)."""
    old = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    return {"cache": str(Path(cache).resolve()), "cache_index_sha256": index_sha256(cache),
            "cache_dataset": (meta.get("arguments") or {}).get("dataset", "nih"),
            "cache_size": spec.cache_size, "cache_count": int(meta["count"]),
            "cache_splits": meta.get("splits"), "labels": list(cfg.labels), "preprocessing": spec.to_dict(),
            "select": cfg.select, "loss_weighting": cfg.loss_weighting, "world_size": info.world_size,
            "launcher": info.launcher, "elastic_run_id": dist.elastic_run_id(), "device": str(device),
            "versions": versions(), "argv": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoints": old.get("checkpoints", {})}


def _validate(model, val_set, criterion, lr_ctl, info, ctx, cfg) -> dict:
    """Validation loss (the trained loss, weighted as in training) everywhere; AUROC on rank 0 only."""
    dist.broadcast_buffers(model)  # evaluate exactly rank 0's model (the one checkpointed)
    probs = predict_distributed(model, val_set, info, ctx, batch_size=2 * cfg.batch_size, workers=cfg.workers)
    val_loss = loss_from_probs(val_set.labels, probs, criterion.w_pos.cpu().numpy(), criterion.w_neg.cpu().numpy())
    lr_ctl.observe_val_loss(val_loss)
    out = {"val_loss": val_loss, "loss_weighting": cfg.loss_weighting}
    if info.is_main:  # AUROC once, on the whole gathered validation set
        per_class = auroc(val_set.labels, probs)
        out["val_auroc_mean"] = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
        out["auroc"] = {n: (None if not np.isfinite(a) else float(a)) for n, a in zip(cfg.labels, per_class)}
    return out


def _restore(ckpt, path, cfg, info, model, optimizer, lr_ctl, scaler, saver) -> tuple[int, int, int]:
    """Load a checkpoint's state into this run's objects; returns (epoch, step in epoch, global step)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    lr_ctl.load_state_dict(ckpt["lr"])
    if scaler.is_enabled() and ckpt_scaler_state(ckpt):  # fp16 now and then (a disabled scaler saved {})
        scaler.load_state_dict(ckpt_scaler_state(ckpt))
    epoch, step_offset, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
    selection = ckpt_selection(ckpt)
    if selection["select"] == cfg.select:
        saver.best = selection["best"] if selection["best"] is not None else saver.best
    else:
        _say(info, f"note: {path} selected models by {selection['select']}, this run by {cfg.select}: "
                   f"best.pt is replaced at the next validation")
    saved_world = ckpt_world_size(ckpt)
    if saved_world is not None and saved_world != info.world_size:
        old_lr, old_batch, _ = scaled_lr(config_from_dict(ckpt["config"]), saved_world)
        new_lr, new_batch, rule = scaled_lr(cfg, info.world_size)
        _say(info, f"note: {path} was saved by {saved_world} process(es), this run has {info.world_size}: global batch "
                   f"{old_batch} -> {new_batch}, lr {old_lr:.4g} -> {new_lr:.4g} ({rule} scaling); an epoch may now have "
                   f"another number of steps, and warmup / schedules continue from the same epoch")
    set_rng_state(ckpt_rng_state(ckpt, info.rank, info.world_size))
    if step_offset and ckpt_batch_layout(ckpt) != (info.world_size, cfg.batch_size, cfg.accum_steps):
        _say(info, f"warning: {path} was saved mid-epoch by {saved_world} process(es) with another "
                   f"batch layout; the sample order differs now, so epoch {epoch + 1} restarts from its beginning")
        step_offset = 0
    if epoch >= cfg.epochs:
        _say(info, f"resumed from {path}: all {cfg.epochs} epochs are done; nothing to train (raise --epochs to go on)")
    else:
        _say(info, f"resumed from {path}: epoch {epoch + 1}, step {step_offset} (global step {global_step})")
    return epoch, step_offset, global_step


def resolve_config(run: str | os.PathLike, config_file: str | None, cli: dict, sets: list[str] | None,
                   resume: str | None) -> TrainConfig:
    """The config of a run: when resuming, the run's saved config is the base, then --config, flags, --set."""
    import yaml

    saved = Path(run) / "config.yaml"
    base = None
    if (resume is not None or _elastic_continuation(Path(run))) and saved.is_file():
        base = config_from_dict(yaml.safe_load(saved.read_text()))
    return build_config(config_file, cli, sets, base=base)
