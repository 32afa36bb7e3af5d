"""Training config: defaults < YAML recipe < CLI flags < --set; clear errors; the bundled recipes."""

from __future__ import annotations

import pytest
import yaml

from chexnet import cli
from chexnet.cli.training import train_cli_overrides
from chexnet.config import (ConfigError, TrainConfig, apply_overrides, build_config, config_from_dict, list_recipes,
                            load_yaml, save_config)
from chexnet.labels import PATHOLOGIES


def _recipe(tmp_path, **fields):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def test_precedence_yaml_then_flags_then_set(tmp_path):
    recipe = _recipe(tmp_path, lr=0.5, batch_size=8, epochs=7, optimizer="sgd")
    cfg = build_config(recipe, {"lr": 0.1, "epochs": 3, "arch": None}, ["lr=0.01"])
    assert cfg.lr == 0.01  # --set beats the flag and the file
    assert cfg.epochs == 3  # the flag beats the file
    assert cfg.batch_size == 8 and cfg.optimizer == "sgd"  # the file beats the defaults
    assert cfg.arch == TrainConfig().arch  # a None flag (not given) changes nothing


def test_parsed_command_line_precedence(tmp_path):
    recipe = _recipe(tmp_path, lr=0.5, batch_size=8, hflip=True)
    args = cli.build_parser().parse_args(["train", "--cache", "c", "--out", "o", "--config", recipe, "--lr", "0.2",
                                          "--no-hflip", "--set", "batch_size=2", "--set", "betas=[0.8, 0.9]"])
    cfg = build_config(args.config, train_cli_overrides(args), args.set)
    assert (cfg.lr, cfg.hflip, cfg.batch_size, cfg.betas) == (0.2, False, 2, (0.8, 0.9))


@pytest.mark.parametrize("where", ["yaml", "flags", "set"])
def test_unknown_field_is_named(tmp_path, where):
    kwargs = {"yaml": dict(config_file=_recipe(tmp_path, learning_rat=0.1), cli={}),
              "flags": dict(config_file=None, cli={"learning_rat": 0.1}),
              "set": dict(config_file=None, cli={}, sets=["learning_rat=0.1"])}[where]
    with pytest.raises(ConfigError, match="learning_rat") as err:
        build_config(**kwargs)
    if where == "yaml":
        assert "recipe.yaml" in str(err.value)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="optimizer"):
        apply_overrides(TrainConfig(), {"optimizer": "rmsprop"}, "x")
    with pytest.raises(ConfigError, match="epochs"):
        apply_overrides(TrainConfig(), {"epochs": "many"}, "x")
    with pytest.raises(ConfigError, match="hflip"):
        apply_overrides(TrainConfig(), {"hflip": "maybe"}, "x")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config(None, {}, ["lr"])


def test_missing_recipe_lists_the_bundled_ones(tmp_path):
    with pytest.raises(ConfigError, match="chexnet"):
        load_yaml(tmp_path / "nope.yaml")


def test_dashes_and_types_are_coerced():
    cfg = apply_overrides(TrainConfig(), {"batch-size": "8", "lr": "1e-4", "hflip": "false", "betas": "0.8,0.99",
                                          "warmup_epochs": 1}, "x")
    assert (cfg.batch_size, cfg.lr, cfg.hflip, cfg.betas, cfg.warmup_epochs) == (8, 1e-4, False, (0.8, 0.99), 1.0)
    assert isinstance(cfg.warmup_epochs, float)


def test_saved_config_round_trips(tmp_path):
    cfg = build_config("keras-horovod", {"epochs": 2}, ["labels=[Hernia, Mass]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg and again.labels == ("Hernia", "Mass")


def test_bundled_recipes_exist():
    assert {"chexnet", "keras-horovod", "vgg16", "demo"} <= set(list_recipes())
    for name in ("chexnet", "keras-horovod", "vgg16", "demo"):
        assert build_config(name, {}).labels == PATHOLOGIES
        assert build_config(f"{name}.yaml", {}) == build_config(name, {})


# Rajpurkar et al. 2017 (arXiv 1711.05225 v3), section 3.1: every field the paper states, with its words.
CHEXNET_PAPER = {
    "arch": "densenet121",  # "a 121-layer Dense Convolutional Network"
    "weights": "imagenet",  # "weights ... initialized with the weights from a model pretrained on ImageNet"
    "input_size": 224,  # "we downscale the images to 224x224"
    "input_transform": "resize",  # downscaled: the whole image, not a crop
    "hflip": True,  # "augment the training data with random horizontal flipping"
    "optimizer": "adam",  # "trained end-to-end using Adam with standard parameters"
    "betas": (0.9, 0.999),  # "(beta1 = 0.9 and beta2 = 0.999)"
    "lr": 1e-3,  # "an initial learning rate of 0.001"
    "batch_size": 16,  # "mini-batches of size 16"
    "lr_reference_batch": 16,  # the LR above is for that batch
    "schedule": "plateau",  # "decayed by a factor of 10 each time the validation loss plateaus after an epoch"
    "plateau_factor": 0.1,
    "plateau_patience": 0,  # checked after every epoch
    "select": "val_loss",  # "pick the model with the lowest validation loss"
    "loss_weighting": "none",  # the 14-class model: unweighted binary cross-entropies
    "warmup_epochs": 0.0,  # no warmup
    "weight_decay": 0.0,  # none mentioned
    "labels": PATHOLOGIES,  # "14 binary labels"
}


@pytest.mark.parametrize("field", sorted(CHEXNET_PAPER))
def test_chexnet_recipe_is_the_paper(field):
    assert getattr(build_config("chexnet", {}), field) == CHEXNET_PAPER[field], field


def test_chexnet_recipe_resizes_the_whole_image_to_224():
    """The cached 256 px row reaches the network whole: its corners are not cut off."""
    import torch

    from chexnet.preprocess import Preprocessing, input_transform

    c = build_config("chexnet", {})
    t = input_transform(Preprocessing(cache_size=256, input_size=c.input_size, input_transform=c.input_transform))
    row = torch.zeros(1, 1, 256, 256, dtype=torch.uint8)
    row[..., :8, :8] = 255  # a bright 8 px corner, inside the 16 px margin a 224 crop would cut
    out = t(row)
    assert out.shape == (1, 3, 224, 224)
    assert out[0, 0, :6, :6].min() > out[0, 0, 100, 100] + 1, "the corner must survive"


def test_chexnet_recipe_lr_schedule_is_the_papers():
    """Adam at 0.001, divided by 10 after the first epoch whose validation loss does not improve."""
    from chexnet.optim import LRController, scaled_lr

    c = build_config("chexnet", {})
    lr, global_batch, _ = scaled_lr(c, 1)
    assert (lr, global_batch) == (1e-3, 16)
    ctl = LRController(torch_opt(), c, lr, steps_per_epoch=100)
    assert ctl.lr_at(0) == ctl.lr_at(99) == pytest.approx(1e-3)
    for loss, expected in ((0.20, 1e-3), (0.18, 1e-3), (0.19, 1e-4), (0.17, 1e-4), (0.17, 1e-5)):
        ctl.observe_val_loss(loss)
        assert ctl.lr_at(500) == pytest.approx(expected), loss


def torch_opt():
    import torch

    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


# The Keras + Horovod report and its authors' script (github.com/lwilson/ai-radiologist) + Horovod's recipe
KERAS_HOROVOD_REPORT = {
    "arch": "densenet121",  # DenseNet121(include_top=False, weights='imagenet', ...)
    "weights": "imagenet",
    "input_size": 256,  # input_shape=(256, 256, 3)
    "input_transform": "resize",
    "head_bias_init": "ones",  # Dense(14, activation='sigmoid', bias_initializer='ones')
    "optimizer": "adadelta",  # Adadelta(lr=1.0)
    "lr": 1.0,
    "rho": 0.95,  # Keras' default
    "batch_size": 16,  # per worker
    "lr_reference_batch": 16,  # one worker's batch: Horovod's lr x hvd.size()
    "lr_scaling": "linear",
    "warmup_epochs": 5.0,  # LearningRateWarmupCallback's default (the report does not give its length)
    "schedule": "plateau",  # ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=1, epsilon=0.01)
    "plateau_factor": 0.1,
    "plateau_patience": 1,
    "plateau_min_delta": 0.01,
    "select": "val_loss",  # ModelCheckpoint(monitor='val_loss', save_best_only=True)
    "loss_weighting": "none",  # loss='binary_crossentropy'
    "epochs": 10,
}


@pytest.mark.parametrize("field", sorted(KERAS_HOROVOD_REPORT))
def test_keras_horovod_recipe_is_the_report(field):
    assert getattr(build_config("keras-horovod", {}), field) == KERAS_HOROVOD_REPORT[field], field


def test_keras_horovod_warmup_is_horovods_callback():
    """64 workers: LR 1.0 x 64, reached from 1.0 as LearningRateWarmupCallback does, epoch by epoch."""
    from chexnet.optim import LRController, scaled_lr

    c = build_config("keras-horovod", {})
    lr, _, _ = scaled_lr(c, 64)
    assert lr == 64.0
    steps = 77871 // (16 * 64)
    ctl = LRController(torch_opt(), c, lr, steps_per_epoch=steps)
    assert ctl.lr_at(0) == 1.0
    for epoch in range(6):
        assert ctl.lr_at(epoch * steps) == pytest.approx(lr / 64 * (epoch * 63 / 5 + 1))


def test_vgg16_and_demo_recipes():
    v, k = build_config("vgg16", {}), build_config("keras-horovod", {})
    assert v.arch == "vgg16" and v.to_dict() == {**k.to_dict(), "arch": "vgg16"}, "the same script, another topology"
    d = build_config("demo", {})
    assert d.weights == "none", "the demo must not need a download"
    assert d.input_transform == "resize"


def test_saved_configs_of_older_runs_still_load():
    """image_size was a crop size, pos_weight the N/P weighting, and best.pt the highest AUROC."""
    old = config_from_dict({"arch": "resnet18", "image_size": 200, "pos_weight": True})
    assert (old.input_size, old.input_transform, old.loss_weighting, old.select) == (200, "crop", "pos_ratio", "val_auroc")
    assert config_from_dict({"pos_weight": False}).loss_weighting == "none"


def test_train_help_mentions_the_recipes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for word in ("--nproc", "--max-restarts", "--resume", "--set", "--grad-compression", "keras-horovod"):
        assert word in out


def test_resolve_config_uses_the_saved_config_when_resuming(tmp_path):
    from chexnet.train import resolve_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config("demo", {"epochs": 3, "lr": 0.123}), run / "config.yaml")
    resumed = resolve_config(run, None, {"epochs": 5}, [], resume="last")
    assert resumed.lr == 0.123 and resumed.epochs == 5 and resumed.arch == "resnet18"
    fresh = resolve_config(run, None, {"epochs": 5}, [], resume=None)
    assert fresh.lr == TrainConfig().lr


def test_every_auto_switch_has_an_on_off_auto_flag():
    from chexnet.cli.training import TRAIN_AUTO_SWITCHES
    from chexnet.config import AUTO_SWITCHES

    assert sorted(n for switches in TRAIN_AUTO_SWITCHES.values() for n, _, _ in switches) == sorted(AUTO_SWITCHES)
    for name in AUTO_SWITCHES:
        flag = "--" + name.replace("_", "-")
        for argv, want in (([flag], True), ([flag, "auto"], "auto"), ([flag, "off"], False), (["--no-" + flag[2:]], False)):
            args = cli.build_parser().parse_args(["train", "--cache", "c", "--out", "o", *argv])
            assert train_cli_overrides(args)[name] == want, argv
