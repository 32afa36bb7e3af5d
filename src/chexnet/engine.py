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
        if self.transform is None:
            self.transform = input_transform(None).to(self.device)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def _to_input(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    return ctx.transform(x.to(ctx.device, non_blocking=True), ctx.channels_last)


def train_one_epoch(model, loader, optimizer, criterion, lr_ctl, scaler, ctx: StepContext, *, epoch: int,
                    global_step: int, steps: int, step_offset: int = 0, show_progress: bool = False,
                    on_log: Callable[[dict], None] | None = None,
                    on_step: Callable[[int, int], None] | None = None,
                    sync_at: Callable[[int], bool] | None = None) -> dict:
    """Run ``steps`` optimizer steps (each of ``ctx.accum_steps`` micro-batches) over ``loader``.

    ``step_offset`` is the number of steps of this epoch already done (mid-epoch resume); ``global_step`` counts
    optimizer steps since the start of training. The host does not wait for the device between steps: losses and
    a "first non-finite step" marker accumulate on the device and are checked (and all-reduced across ranks)
    every ``ctx.log_every`` steps, at the epoch's end, and wherever ``sync_at(global_step)`` says (before a
    checkpoint, so a non-finite step is never saved). The rank-averaged loss goes to ``on_log``;
    ``on_step(step_in_epoch, global_step)`` runs after each step. ``--skip-nonfinite`` checks every step instead.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    it = iter(loader)
    bar = tqdm(total=steps, initial=step_offset, desc=f"epoch {epoch + 1}", unit="step", disable=not show_progress,
               dynamic_ncols=True, leave=False)
    dev = ctx.device
    window_loss = torch.zeros((), dtype=torch.float64, device=dev)  # sum of finite step losses in the window
    window_steps = torch.zeros((), dtype=torch.float64, device=dev)
    first_bad = torch.full((), -1, dtype=torch.int64, device=dev)  # first global step with a non-finite loss
    epoch_loss = torch.zeros(2, dtype=torch.float64)
    window_images, window_t0, skipped = 0, time.perf_counter(), 0
    epoch_images, epoch_t0 = 0, time.perf_counter()
    world = dist.world_size()
    for step_in_epoch in range(step_offset, steps):
        lr = lr_ctl.set_step(global_step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), dtype=torch.float32, device=dev)
        for micro in range(ctx.accum_steps):
            x, y = next(it)
            y = y.to(dev, non_blocking=True)
            inputs = _to_input(x, ctx)
            sync = micro == ctx.accum_steps - 1
            no_sync = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
            with no_sync:
                with ctx.autocast():
                    loss = criterion(model(inputs).float(), y) / ctx.accum_steps
                (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach()
            window_images += x.shape[0]
            epoch_images += x.shape[0]
        if scaler is not None:
            scaler.unscale_(optimizer)
        if ctx.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
        finite = torch.isfinite(step_loss)
        if ctx.skip_nonfinite and scaler is None:
            # gradients are all-reduced, so a non-finite step on any rank shows in every rank's gradient norm
            norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
            if not bool(torch.isfinite(norm)):
                skipped += 1
            else:
                optimizer.step()
        else:
            if scaler is not None:  # fp16: GradScaler skips steps whose gradients overflow and lowers its scale
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if not ctx.skip_nonfinite:  # fp16 + --skip-nonfinite: the scaler already skips the step
                # a non-finite *loss* is divergence, not fp16 overflow: remember the first one, stop at the next sync
                first_bad = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, global_step + 1),
                                        first_bad)
        window_loss += torch.where(finite, step_loss.double(), torch.zeros((), dtype=torch.float64, device=dev))
        window_steps += finite.double()
        global_step += 1
        bar.update(1)
        last = step_in_epoch + 1 == steps
        if (step_in_epoch + 1) % ctx.log_every == 0 or last or (sync_at is not None and sync_at(global_step)):
            # MetricAverageCallback: one small all-reduce of [loss sum, steps, -first bad step] per window
            # reduce on the device (NCCL has no CPU tensors), then one copy to the host
            totals = dist.all_reduce_sum(torch.stack([window_loss, window_steps])).cpu()
            bad = dist.all_reduce_max(torch.where(first_bad >= 0, -first_bad, torch.full_like(first_bad, -2**62))).cpu()
            if bad.item() != -2**62:
                bar.close()
                step = -bad.item()
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, global step {step} (step "
                                         f"{step - (global_step - step_in_epoch - 1)} of the epoch); lower the LR, "
                                         f"use --precision fp32, or pass --skip-nonfinite to skip such steps")
            elapsed = time.perf_counter() - window_t0
            rate = window_images * world / max(elapsed, 1e-9)
            mean_loss = (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")
            epoch_loss += totals
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
            if on_log is not None and ((step_in_epoch + 1) % ctx.log_every == 0 or last):
                on_log({"kind": "train", "epoch": epoch + 1, "step": global_step, "loss": mean_loss, "lr": lr,
                        "img_per_s": rate, "skipped": skipped})
            window_loss.zero_()
            window_steps.zero_()
            window_images, window_t0 = 0, time.perf_counter()
        if on_step is not None:
            on_step(step_in_epoch + 1, global_step)
    bar.close()
    elapsed = time.perf_counter() - epoch_t0
    return {"loss": (epoch_loss[0] / epoch_loss[1]).item() if epoch_loss[1] > 0 else float("nan"),
            "global_step": global_step, "skipped": skipped, "img_per_s": epoch_images * world / max(elapsed, 1e-9)}


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
