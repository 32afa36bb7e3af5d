"""One training epoch and one prediction pass: small functions with explicit arguments.

Distributed concerns come in through ``chexnet.dist`` helpers only (loss averaging across ranks, gathering
predictions); under a single process they are no-ops.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from chexnet import dist
from chexnet.preprocess import input_transform


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    accum_steps: int = 1
    grad_clip: float = 0.0
    skip_nonfinite: bool = False
    log_every: int = 10
    # uint8 batch -> normalised network input (chexnet.preprocess.InputTransform, on ``device``); the default
    # only normalises (batches already of the network's size)
    transform: torch.nn.Module | None = None

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16", "fp16"):  # "auto" is resolved when training starts
            raise ValueError(f"StepContext: precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.transform is None:
            self.transform = input_transform(None).to(self.device)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def _to_input(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    return ctx.transform(x.to(ctx.device, non_blocking=True), ctx.channels_last)


def _accumulate_gradients(model, it, criterion, scaler, ctx: StepContext) -> tuple[torch.Tensor, int]:
    """Forward and backward ``ctx.accum_steps`` micro-batches drawn from ``it`` (under DDP the gradients are
    all-reduced on the last one only). Returns the step's loss, on the device (not waited for), and its images."""
    step_loss = torch.zeros((), dtype=torch.float32, device=ctx.device)
    images = 0
    for micro in range(ctx.accum_steps):
        x, y = next(it)
        y = y.to(ctx.device, non_blocking=True)
        inputs = _to_input(x, ctx)
        sync = micro == ctx.accum_steps - 1
        no_sync = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with no_sync:
            with ctx.autocast():
                loss = criterion(model(inputs).float(), y) / ctx.accum_steps
            scaler.scale(loss).backward()  # a disabled scaler (not fp16) returns the loss as it is
        step_loss += loss.detach()
        images += x.shape[0]
    return step_loss, images


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, params, ctx: StepContext) -> bool:
    """One optimizer step over the accumulated gradients, under the run's policy. Returns False when the step was
    skipped for non-finite gradients (``ctx.skip_nonfinite`` without fp16), True otherwise.

    fp16 (``scaler`` enabled): the gradients are unscaled before clipping, and the scaler itself skips steps whose
    gradients overflow and lowers its scale (counted as taken here). Otherwise ``scaler`` is disabled and its
    calls are no-ops around a plain ``optimizer.step()``.

    A parameter-server worker's optimizer (chexnet.ps, ``remote_step``) takes the step itself: the servers average
    the workers' gradients, then clip and check them by the global norm, under the same policy.
    """
    if hasattr(optimizer, "remote_step"):
        return optimizer.remote_step()
    scaler.unscale_(optimizer)
    if ctx.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
    if ctx.skip_nonfinite and not scaler.is_enabled():
        # gradients are all-reduced, so a non-finite step on any rank shows in every rank's gradient norm
        norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
        if not bool(torch.isfinite(norm)):
            return False
        optimizer.step()
        return True
    scaler.step(optimizer)
    scaler.update()
    return True


_NO_BAD_STEP = -2**62


class LossWindow:
    """The training loss over a window of steps (after torchvision references' ``SmoothedValue``), kept on the
    device so that no step waits for the host, and the epoch's totals of the flushed windows.

    :meth:`update` adds a step; :meth:`flush` (collective: every rank calls it at the same steps) all-reduces the
    window over ranks, adds it to the epoch and starts the next window.
    """

    def __init__(self, device: torch.device, world_size: int):
        self.device, self.world_size = device, world_size
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # sum of finite step losses in the window
        self.steps = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first global step with a non-finite loss
        self.images, self.t0 = 0, time.perf_counter()
        self.epoch_totals = torch.zeros(2, dtype=torch.float64)  # [loss sum, finite steps] of the flushed windows
        self.epoch_images, self.epoch_t0 = 0, time.perf_counter()

    def update(self, step_loss: torch.Tensor, images: int, bad_step: int | None = None) -> None:
        """Add one step's loss (a non-finite one is left out of the mean) and its number of images; with
        ``bad_step`` (a global step number), a non-finite loss is remembered as divergence at that step."""
        finite = torch.isfinite(step_loss)
        if bad_step is not None:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, torch.full_like(self.first_bad, bad_step),
                                         self.first_bad)
        self.loss += torch.where(finite, step_loss.double(), torch.zeros((), dtype=torch.float64, device=self.device))
        self.steps += finite.double()
        self.images += images
        self.epoch_images += images

    def flush(self) -> dict:
        """The window's record: ``loss`` (mean over ranks and finite steps; nan when none), ``img_per_s`` (all
        ranks together) and ``first_bad_step`` (the first global step with a non-finite loss on any rank, or None;
        then the window is left as it is)."""
        # MetricAverageCallback: one small all-reduce of [loss sum, steps] and one of -first bad step per window;
        # reduce on the device (NCCL has no CPU tensors), then one copy to the host
        totals = dist.all_reduce_sum(torch.stack([self.loss, self.steps])).cpu()
        bad = dist.all_reduce_max(torch.where(self.first_bad >= 0, -self.first_bad,
                                              torch.full_like(self.first_bad, _NO_BAD_STEP))).cpu()
        if bad.item() != _NO_BAD_STEP:
            return {"loss": float("nan"), "img_per_s": float("nan"), "first_bad_step": -bad.item()}
        elapsed = time.perf_counter() - self.t0
        record = {"loss": (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan"),
                  "img_per_s": self.images * self.world_size / max(elapsed, 1e-9), "first_bad_step": None}
        self.epoch_totals += totals
        self.loss.zero_()
        self.steps.zero_()
        self.images, self.t0 = 0, time.perf_counter()
        return record

    def epoch_record(self) -> dict:
        """``loss``: the mean over the flushed windows' finite steps (nan when none); ``img_per_s``: all ranks'
        images since this object was made."""
        elapsed = time.perf_counter() - self.epoch_t0
        totals = self.epoch_totals
        return {"loss": (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan"),
                "img_per_s": self.epoch_images * self.world_size / max(elapsed, 1e-9)}


def train_one_epoch(model, loader, optimizer, criterion, lr_ctl, scaler: torch.amp.GradScaler | None,
                    ctx: StepContext, *, epoch: int, global_step: int, steps: int, step_offset: int = 0,
                    show_progress: bool = False, on_log: Callable[[dict], None] | None = None,
                    on_step: Callable[[int, int], None] | None = None,
                    sync_at: Callable[[int], bool] | None = None) -> dict:
    """Run ``steps`` optimizer steps (each of ``ctx.accum_steps`` micro-batches) over ``loader``.

    ``scaler``: a ``torch.amp.GradScaler``, enabled for fp16 (None: a disabled one). ``step_offset`` is the
    number of steps of this epoch already done (mid-epoch resume); ``global_step`` counts optimizer steps since
    the start of training. The host does not wait for the device between steps: losses and a "first non-finite
    step" marker accumulate on the device (:class:`LossWindow`) and are checked (and all-reduced across ranks)
    every ``ctx.log_every`` steps, at the epoch's end, and wherever ``sync_at(global_step)`` says (before a
    checkpoint, so a non-finite step is never saved). The rank-averaged loss goes to ``on_log``;
    ``on_step(step_in_epoch, global_step)`` runs after each step. ``--skip-nonfinite`` checks every step instead.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if scaler is None:
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=False)
    it = iter(loader)
    bar = tqdm(total=steps, initial=step_offset, desc=f"epoch {epoch + 1}", unit="step", disable=not show_progress,
               dynamic_ncols=True, leave=False)
    window = LossWindow(ctx.device, dist.world_size())
    skipped = 0
    for step_in_epoch in range(step_offset, steps):
        lr = lr_ctl.set_step(global_step)
        optimizer.zero_grad(set_to_none=True)
        step_loss, images = _accumulate_gradients(model, it, criterion, scaler, ctx)
        if not optimizer_step(optimizer, scaler, params, ctx):
            skipped += 1
        # a non-finite *loss* is divergence, not fp16 overflow: remember the first one, stop at the next flush
        # (with --skip-nonfinite such steps are skipped instead: by optimizer_step, or by the fp16 scaler)
        window.update(step_loss, images, bad_step=None if ctx.skip_nonfinite else global_step + 1)
        global_step += 1
        bar.update(1)
        log = (step_in_epoch + 1) % ctx.log_every == 0 or step_in_epoch + 1 == steps
        if log or (sync_at is not None and sync_at(global_step)):
            record = window.flush()
            if record["first_bad_step"] is not None:
                bar.close()
                step = record["first_bad_step"]
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, global step {step} (step "
                                         f"{step - (global_step - step_in_epoch - 1)} of the epoch); lower the LR, "
                                         f"use --precision fp32, or pass --skip-nonfinite to skip such steps")
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{record['img_per_s']:.1f}")
            if on_log is not None and log:
                on_log({"kind": "train", "epoch": epoch + 1, "step": global_step, "loss": record["loss"], "lr": lr,
                        "img_per_s": record["img_per_s"], "skipped": skipped})
        if on_step is not None:
            on_step(step_in_epoch + 1, global_step)
    bar.close()
    totals = window.epoch_record()
    return {"loss": totals["loss"], "global_step": global_step, "skipped": skipped, "img_per_s": totals["img_per_s"]}


@torch.no_grad()
def predict_dataset(model, dataset, indices, ctx: StepContext, batch_size: int = 64, workers: int = 0,
            show_progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities for ``dataset[indices]`` (test-time crops averaged), float32 (n, classes)."""
    model.eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, pin_memory=ctx.device.type == "cuda")
    out = []
    for x, _ in tqdm(loader, desc="predict", unit="batch", disable=not show_progress, dynamic_ncols=True, leave=False):
        crops = 1
        if x.dim() == 5:  # (B, K, 1, H, W): ten-crop / flip TTA
            crops = x.shape[1]
            x = x.flatten(0, 1)
        with ctx.autocast():
            logits = model(_to_input(x, ctx)).float()
        probs = torch.sigmoid(logits).view(-1, crops, logits.shape[-1]).mean(1)
        out.append(probs.cpu())
    n_cls = out[0].shape[1] if out else 0
    return torch.cat(out).numpy() if out else np.zeros((0, n_cls), np.float32)


def predict_distributed(model, dataset, info: dist.DistInfo, ctx: StepContext, batch_size: int = 64,
                        workers: int = 0, show_progress: bool = False) -> np.ndarray:
    """Each rank predicts a strided shard; the shards are all-gathered and put back in dataset order.

    Every index is predicted exactly once (no DistributedSampler padding duplicates to drop), so metrics are
    computed once over the whole set and equal those of a single process.
    """
    n = len(dataset)
    mine = np.arange(info.rank, n, info.world_size)
    probs = predict_dataset(model, dataset, mine, ctx, batch_size, workers, show_progress)
    gathered = dist.all_gather_objects((mine, probs))
    width = max(p.shape[1] for _, p in gathered)  # a rank with an empty shard (more ranks than rows) has width 0
    full = np.zeros((n, width), dtype=np.float32)
    for idx, p in gathered:
        if len(idx):
            full[idx] = p
    return full
