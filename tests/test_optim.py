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


def test_warmup_starts_at_the_reference_lr_and_ramps_linearly_to_the_scaled_lr():
    """Goyal et al. / Horovod: 8 workers at the reference batch each -> scaled LR 8 x 0.1; warmup goes 0.1 -> 0.8."""
    c = cfg(lr=0.1, lr_reference_batch=16, batch_size=16, lr_scaling="linear", warmup_epochs=2, schedule="none")
    scaled, _, _ = scaled_lr(c, 8)
    ctl = LRController(_opt(), c, base_lr=scaled, steps_per_epoch=10)
    lrs = [ctl.lr_at(s) for s in range(25)]
    assert ctl.warmup_steps == 20
    assert lrs[0] == pytest.approx(0.1)  # the first step runs at the single-worker (reference-batch) LR
    assert all(b > a for a, b in zip(lrs[:20], lrs[1:21]))
    assert lrs[10] == pytest.approx(0.1 + 0.7 * 10 / 20)
    assert lrs[20:] == [pytest.approx(0.8)] * 5


def test_warmup_matches_horovods_callback_at_epoch_boundaries():
    """Horovod's LearningRateWarmupCallback: lr = initial_lr / size * (epoch * (size - 1) / warmup + 1)."""
    size, warmup, steps = 4, 5, 7
    c = cfg(lr=1.0, lr_reference_batch=16, batch_size=16, lr_scaling="linear", warmup_epochs=warmup, schedule="none")
    scaled, _, _ = scaled_lr(c, size)
    ctl = LRController(_opt(), c, base_lr=scaled, steps_per_epoch=steps)
    for epoch in range(warmup + 1):
        assert ctl.lr_at(epoch * steps) == pytest.approx(scaled / size * (epoch * (size - 1) / warmup + 1))


def test_warmup_is_flat_when_there_is_nothing_to_scale():
    ctl = LRController(_opt(), cfg(lr=0.3, warmup_epochs=2, schedule="none"), base_lr=0.3, steps_per_epoch=10)
    assert {round(ctl.lr_at(s), 12) for s in range(30)} == {0.3}


def test_fractional_warmup():
    ctl = LRController(_opt(), cfg(lr=0.2, warmup_epochs=0.5, schedule="none"), base_lr=1.0, steps_per_epoch=10)
    assert ctl.warmup_steps == 5 and ctl.lr_at(0) == pytest.approx(0.2) and ctl.lr_at(5) == pytest.approx(1.0)
    assert ctl.lr_at(4) == pytest.approx(0.2 + 0.8 * 4 / 5)


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


def test_plateau_min_delta_is_an_absolute_improvement():
    """Keras' ReduceLROnPlateau(min_delta=0.01, patience=1), as the Keras + Horovod report's code used."""
    ctl = LRController(_opt(), cfg(schedule="plateau", plateau_patience=1, plateau_min_delta=0.01), base_lr=1.0,
                       steps_per_epoch=1)
    assert not ctl.observe_val_loss(0.200)
    assert not ctl.observe_val_loss(0.195)  # better, but by less than 0.01: a bad epoch
    assert ctl.observe_val_loss(0.194)  # the second bad epoch in a row: LR / 10
    assert ctl.lr_at(5) == pytest.approx(0.1)


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
    ctl = LRController(opt, cfg(lr=0.1, warmup_epochs=1, schedule="none"), base_lr=0.5, steps_per_epoch=4)
    assert ctl.set_step(2) == pytest.approx(0.3)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.3)] * 2


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


def test_schedule_follows_epochs_when_the_world_size_changes():
    """An elastic restart on half the nodes: an epoch has twice the steps (the same per-worker batch over half the
    processes). The cosine / warmup position continues from the same epoch, not from the optimizer step count."""
    c = cfg(warmup_epochs=1, schedule="cosine", epochs=4, min_lr=0.0)
    two = LRController(_opt(), c, base_lr=0.1, steps_per_epoch=10)  # 2 nodes: 10 steps per epoch
    after_two_epochs = two.lr_at(20)
    one = LRController(_opt(), c, base_lr=0.1, steps_per_epoch=20)  # 1 node: 20 steps per epoch
    assert one.resume_at(global_step=20, epoch=2, step_in_epoch=0) == 20
    assert one.set_step(20) == pytest.approx(after_two_epochs)  # epoch 2's start in both layouts
    assert one.set_step(20 + 40 - 1) == pytest.approx(one.lr_at(79))  # the last step of epoch 4
    same = LRController(_opt(), c, base_lr=0.1, steps_per_epoch=10)
    assert same.resume_at(global_step=23, epoch=2, step_in_epoch=3) == 0  # same layout: nothing moves
