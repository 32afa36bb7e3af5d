"""Training config: defaults < YAML recipe < CLI flags < --set; clear errors; the bundled recipes."""

from __future__ import annotations

import pytest
import yaml

from chexnet import cli
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
    cfg = build_config(args.config, cli._train_cli_overrides(args), args.set)
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


def test_chexnet_recipe_is_the_paper():
    c = build_config("chexnet", {})
    assert (c.arch, c.weights, c.image_size, c.hflip) == ("densenet121", "imagenet", 224, True)
    assert (c.optimizer, c.lr, c.betas, c.batch_size) == ("adam", 1e-3, (0.9, 0.999), 16)
    assert (c.schedule, c.plateau_patience, c.plateau_factor) == ("plateau", 1, 0.1)
    assert c.head_bias_init == "zeros"


def test_keras_horovod_recipe_is_the_report():
    c = build_config("keras-horovod", {})
    assert (c.arch, c.weights, c.image_size, c.head_bias_init) == ("densenet121", "imagenet", 256, "ones")
    assert (c.optimizer, c.lr) == ("adadelta", 1.0)
    assert c.warmup_epochs > 0


def test_vgg16_and_demo_recipes():
    v = build_config("vgg16", {})
    assert v.arch == "vgg16" and v.optimizer == "adadelta" and v.head_bias_init == "ones"
    d = build_config("demo", {})
    assert d.weights == "none", "the demo must not need a download"


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
