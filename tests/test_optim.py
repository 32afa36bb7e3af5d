"""Optimizers, LR scaling rules, warmup and the schedules (plain numbers, no training)."""

from __future__ import annotations

import math

import pytest
import torch

from chexnet.config import TrainConfig, apply_overrides
from chexnet.optim import LRController, build_optimizer, scaled_lr, scaling_rule


def cfg(**kw) -> TrainConfig:
    return apply_overrides(TrainConfig(), kw, "test")


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("rule,expected", [("linear", 0.4), ("sqrt", 0.2), ("none", 0.1)])
def test_scaling_rules(rule, expected):
    # global batch = 4 processes x 32 per worker x 2 accumulation steps = 256 = 4 x the reference 64
    lr, global_batch, used = scaled_lr(cfg(lr=0.1, lr_reference_batch=64, batch_size=32, accum_steps=2, lr_scaling=rule), 4)
    assert global_batch == 256 and used == rule
    assert lr == pytest.approx(expected)


def test_auto_scaling_is_linear_for_sgd_and_sqrt_for_adaptive():
    assert scaling_rule(cfg(optimizer="sgd")) == "linear"
    for name in ("adam", "adamw", "adadelta"):
        assert scaling_rule(cfg(optimizer=name)) == "sqrt"
    assert scaled_lr(cfg(optimizer="sgd", lr=0.1, lr_reference_batch=16, batch_size=16), 8)[0] == pytest.approx(0.8)
    assert scaled_lr(cfg(optimizer="adam", lr=0.1, lr_reference_batch=16, batch_size=16), 4)[0] == pytest.approx(0.2)


def test_one_process_at_the_reference_batch_keeps_the_lr():
    assert scaled_lr(cfg(lr=3e-4, lr_reference_batch=16, batch_size=16, lr_scaling="linear"), 1) == (3e-4, 16, "linear")


def test_warmup_ramps_linearly_to_the_scaled_lr():
    ctl = LRController(_opt(), cfg(warmup_epochs=2, schedule="none"), base_lr=0.8, steps_per_epoch=10)
    lrs = [ctl.lr_at(s) for s in range(25)]
    assert ctl.warmup_steps == 20
    assert lrs[0] == pytest.approx(0.8 / 20)
    assert all(b > a for a, b in zip(lrs[:20], lrs[1:20]))
    assert lrs[9] == pytest.approx(0.4)
    assert lrs[19] == pytest.approx(0.8) and lrs[20:] == [pytest.approx(0.8)] * 5


def test_fractional_warmup():
    ctl = LRController(_opt(), cfg(warmup_epochs=0.5, schedule="none"), base_lr=1.0, steps_per_epoch=10)
    assert ctl.warmup_steps == 5 and ctl.lr_at(4) == pytest.approx(1.0) and ctl.lr_at(0) == pytest.approx(0.2)


def test_cosine_goes_from_base_to_min_after_warmup():
    ctl = LRController(_opt(), cfg(warmup_epochs=1, schedule="cosine", epochs=5, min_lr=1e-4), base_lr=0.1,
                       steps_per_epoch=10)
    assert ctl.lr_at(10) == pytest.approx(0.1)  # end of warmup: the full LR
    mid = 10 + 20  # half-way through the 40 cosine steps
    assert ctl.lr_at(mid) == pytest.approx(1e-4 + 0.5 * (0.1 - 1e-4))
    assert ctl.lr_at(50) == pytest.approx(1e-4)
    assert ctl.lr_at(49) == pytest.approx(1e-4, abs=1e-3) and ctl.lr_at(49) > 1e-4
    lrs = [ctl.lr_at(s) for s in range(10, 51)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_step_decay():
    ctl = LRController(_opt(), cfg(schedule="step", step_size=3, step_gamma=0.1, epochs=10), base_lr=1.0,
                       steps_per_epoch=10)
    assert ctl.lr_at(29) == pytest.approx(1.0)
    assert ctl.lr_at(30) == pytest.approx(0.1)
    assert ctl.lr_at(60) == pytest.approx(0.01)


def test_plateau_reduces_after_patience_like_torch():
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8]
    ctl = LRController(_opt(), cfg(schedule="plateau", plateau_patience=1, plateau_factor=0.1), base_lr=1.0,
                       steps_per_epoch=10)
    ref_opt = _opt(1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.1, patience=1, threshold=1e-4,
                                                     threshold_mode="rel")
    ours, torch_lrs = [], []
    for loss in losses:
        ctl.observe_val_loss(loss)
        ours.append(ctl.lr_at(0))
        ref.step(loss)
        torch_lrs.append(ref_opt.param_groups[0]["lr"])
    assert ours == pytest.approx(torch_lrs)
    assert ours[2] == 1.0 and ours[3] == pytest.approx(0.1)  # two evaluations without improvement (> patience 1)


def test_plateau_state_round_trips_and_ignores_nan():
    ctl = LRController(_opt(), cfg(schedule="plateau", plateau_patience=0), base_lr=1.0, steps_per_epoch=1)
    assert not ctl.observe_val_loss(float("nan"))
    ctl.observe_val_loss(1.0)
    assert ctl.observe_val_loss(2.0)
    other = LRController(_opt(), cfg(schedule="plateau", plateau_patience=0), base_lr=1.0, steps_per_epoch=1)
    other.load_state_dict(ctl.state_dict())
    assert other.lr_at(5) == ctl.lr_at(5) == pytest.approx(0.1)
    assert other.state_dict() == ctl.state_dict()


def test_plateau_respects_min_lr_and_other_schedules_ignore_val_loss():
    ctl = LRController(_opt(), cfg(schedule="plateau", plateau_patience=0, min_lr=0.05), base_lr=1.0, steps_per_epoch=1)
    for loss in (1.0, 2.0, 2.0, 2.0):
        ctl.observe_val_loss(loss)
    assert ctl.lr_at(0) == 0.05
    cos = LRController(_opt(), cfg(schedule="cosine"), base_lr=1.0, steps_per_epoch=1)
    assert not cos.observe_val_loss(1.0) and not cos.observe_val_loss(5.0)


def test_set_step_writes_every_param_group():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                           {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    ctl = LRController(opt, cfg(warmup_epochs=1, schedule="none"), base_lr=0.5, steps_per_epoch=4)
    assert ctl.set_step(1) == pytest.approx(0.25)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.25)] * 2


@pytest.mark.parametrize("name,cls,extra", [
    ("adam", torch.optim.Adam, {"betas": (0.8, 0.99)}),
    ("adamw", torch.optim.AdamW, {"weight_decay": 0.01}),
    ("sgd", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ("adadelta", torch.optim.Adadelta, {"rho": 0.9}),
])
def test_build_optimizer(name, cls, extra):
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, cfg(optimizer=name, **extra), lr=0.3)
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["lr"] == 0.3
    for k, v in extra.items():
        assert group[k] == v, k
    if name != "adamw":
        assert group["weight_decay"] == 0.0
    assert not math.isnan(group["lr"])
