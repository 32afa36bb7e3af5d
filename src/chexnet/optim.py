"""Optimizers, the LR scaling rule, gradual warmup and the decay schedules.

The base LR in a config is defined for a reference global batch (``lr_reference_batch``). With
``global batch = processes x batch_size x accum_steps``, ``lr_scaling`` maps it to the actual batch:

* ``linear``: lr x global/reference (Goyal et al. 2017, "Accurate, Large Minibatch SGD") -- suits SGD;
* ``sqrt``: lr x sqrt(global/reference) -- gentler, usually better for adaptive optimizers (Adam, Adadelta);
* ``none``; ``auto`` (default) picks linear for sgd and sqrt otherwise.

Gradual warmup (Goyal et al. 2017, section 2.2; Horovod's ``LearningRateWarmupCallback``) starts from the
single-worker LR -- the base LR, defined for the reference batch -- and ramps it linearly, step by step, to the
scaled LR over ``warmup_epochs``: step 0 runs at the base LR, step ``warmup_steps`` at the scaled LR. (When the
scaled LR equals the base LR, one worker at the reference batch, there is nothing to warm up.) Then the
schedule applies: ``plateau`` (LR x factor when the validation loss has not improved for more than ``patience``
evaluations, as torch's ReduceLROnPlateau and Keras' ReduceLROnPlateau -- CheXNet's rule), ``cosine`` (per step
to ``min_lr``), ``step`` (x gamma every ``step_size`` epochs) or ``none``.
"""

from __future__ import annotations

import math

import torch

from chexnet.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer. On CUDA, Adam, AdamW and SGD use torch's fused kernels (one launch for all
    parameters instead of one per tensor); elsewhere torch's default (foreach) implementation."""
    params = list(params)
    name = cfg.optimizer
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                               **fused)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=cfg.rho, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def scaling_rule(cfg: TrainConfig) -> str:
    if cfg.lr_scaling != "auto":
        return cfg.lr_scaling
    return "linear" if cfg.optimizer == "sgd" else "sqrt"


def scaled_lr(cfg: TrainConfig, world_size: int) -> tuple[float, int, str]:
    """(scaled LR, global batch, rule used)."""
    global_batch = world_size * cfg.batch_size * cfg.accum_steps
    rule = scaling_rule(cfg)
    ratio = global_batch / cfg.lr_reference_batch
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return cfg.lr * factor, global_batch, rule


class LRController:
    """Sets the optimizer's LR every step from warmup + schedule; its state goes into checkpoints."""

    def __init__(self, optimizer, cfg: TrainConfig, base_lr: float, steps_per_epoch: int,
                 start_lr: float | None = None):
        """``base_lr``: the scaled LR the schedule runs at; ``start_lr``: where warmup starts (the config's
        reference-batch LR, ``cfg.lr``, unless given)."""
        self.opt, self.cfg, self.base_lr = optimizer, cfg, base_lr
        self.start_lr = cfg.lr if start_lr is None else start_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.plateau_scale = 1.0
        self.best_val = math.inf
        self.bad_evals = 0
        self.position_offset = 0  # schedule position = optimizer step + this (see resume_at)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < self.warmup_steps:
            return self.start_lr + (self.base_lr - self.start_lr) * step / self.warmup_steps
        if cfg.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return cfg.min_lr + 0.5 * (self.base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return self.base_lr * cfg.step_gamma ** ((step // self.steps_per_epoch) // max(1, cfg.step_size))
        if cfg.schedule == "plateau":
            return max(cfg.min_lr, self.base_lr * self.plateau_scale)
        return self.base_lr

    def resume_at(self, global_step: int, epoch: int, step_in_epoch: int) -> int:
        """Continue the schedule at ``epoch`` / ``step_in_epoch`` of *this* run's steps per epoch.

        Warmup, cosine and step schedules are laid out in optimizer steps. When a run resumes with another
        world size (an elastic restart on fewer or more nodes) or batch, an epoch has another number of steps
        than the checkpoint's global step counted, so the schedule is re-anchored on epochs. Returns the offset.
        """
        self.position_offset = epoch * self.steps_per_epoch + step_in_epoch - global_step
        return self.position_offset

    def set_step(self, step: int) -> float:
        lr = self.lr_at(step + self.position_offset)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def observe_val_loss(self, loss: float) -> bool:
        """Feed a validation loss (plateau schedule). Returns True when the LR was reduced."""
        if self.cfg.schedule != "plateau" or not math.isfinite(loss):
            return False
        if loss < self.best_val * (1 - 1e-4) - self.cfg.plateau_min_delta:
            self.best_val, self.bad_evals = loss, 0
            return False
        self.bad_evals += 1
        if self.bad_evals > self.cfg.plateau_patience:  # torch ReduceLROnPlateau semantics
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best_val": self.best_val, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_val = float(state["best_val"])
        self.bad_evals = int(state["bad_evals"])
