"""Training configuration: a dataclass, YAML recipe files, CLI overrides; the resolved config is saved in the run.

Precedence: dataclass defaults < ``--config`` YAML file < explicit CLI flags < ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chexnet.choices import CONFIG_CHOICES
from chexnet.labels import PATHOLOGIES


@dataclass
class TrainConfig:
    # model
    arch: str = "densenet121"
    weights: str = "imagenet"  # imagenet | none | PATH to a state_dict / chexnet checkpoint
    head_bias_init: str = "zeros"  # zeros | ones (the Keras + Horovod report used ones)
    # data (see chexnet.preprocess: cache row -> network input)
    input_size: int = 224  # side of the network input, in pixels
    input_transform: str = "resize"  # resize: the whole cached image to input_size (the paper) | crop: a crop of it
    train_crop: str = "random"  # crop mode only: random | random_resized (evaluation takes the centre crop)
    hflip: bool = True
    workers: int = 2  # loader processes per training process
    # optimisation
    epochs: int = 10
    batch_size: int = 16  # per worker
    accum_steps: int = 1
    optimizer: str = "adam"  # adam | adamw | sgd | adadelta
    lr: float = 1e-3  # base LR, defined for a global batch of lr_reference_batch
    lr_reference_batch: int = 16
    lr_scaling: str = "auto"  # linear | sqrt | none | auto (linear for sgd, sqrt for adaptive optimizers)
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    rho: float = 0.95  # adadelta
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    schedule: str = "plateau"  # plateau | cosine | step | none
    plateau_patience: int = 1
    plateau_factor: float = 0.1
    plateau_min_delta: float = 0.0  # plateau: val loss must fall by this much (absolute, as Keras' min_delta) and 1e-4 relative
    step_size: int = 3  # epochs, for schedule=step
    step_gamma: float = 0.1
    min_lr: float = 0.0
    loss_weighting: str = "none"  # none (the 14-class paper) | balanced (w+ = N/(P+N), w- = P/(P+N)) | pos_ratio (N/P on positives)
    select: str = "val_loss"  # best.pt: val_loss (lowest, the paper) | val_auroc (highest mean)
    grad_clip: float = 0.0  # 0 = off
    source_sampling: str = "proportional"  # proportional | balanced: a combined cache's sources per epoch
    # speed
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (chexnet.precision: resolved when training starts)
    channels_last: bool | str = False  # true | false | auto (chexnet.precision: channels-last with bf16 hardware)
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode with compile: default | reduce-overhead | max-autotune
    grad_compression: str = "none"  # none | bf16 | fp16 (DDP communication hook)
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 0  # also save last.pt every N optimizer steps (0 = only at epoch end)
    log_every: int = 10  # steps between train-loss records in metrics.jsonl
    skip_nonfinite: bool = False  # skip steps whose loss/gradients are not finite instead of stopping
    max_steps_per_epoch: int = 0  # 0 = whole epoch (benchmarks and smoke tests use a cap)
    eval_every: int = 1  # epochs between validation passes
    dist_timeout: float = 1800.0  # seconds a collective / the rendezvous waits for a lost or stuck peer before failing
    strategy: str = "allreduce"  # allreduce (DDP's ring all-reduce) | ps (parameter servers: chexnet.ps)
    ps_servers: int = 1  # strategy ps: how many of the job's processes are servers (the others are workers)
    ps_staleness: int = -1  # strategy ps: -1 synchronous; S >= 0 asynchronous, a worker at most S steps ahead of the slowest
    labels: tuple[str, ...] = field(default_factory=lambda: PATHOLOGIES)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["labels"] = list(self.labels)
        return d


CHOICES = CONFIG_CHOICES  # chexnet.choices: each config field with a set of values


class ConfigError(ValueError):
    pass


AUTO_SWITCHES = ("channels_last",)  # switches that also take "auto" (resolved when training starts)


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name in AUTO_SWITCHES and isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            also = ", or auto" if name in AUTO_SWITCHES else ""
            raise ConfigError(f"config field {name!r}: expected true/false{also}, got {value!r}")
        return bool(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        items = list(value)
        if name == "betas":
            return tuple(float(v) for v in items)
        return tuple(str(v) for v in items)
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name!r}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name!r}: expected a number, got {value!r}") from None
    return str(value)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys are an error naming ``source``."""
    names = {f.name: f for f in dataclasses.fields(cfg)}
    defaults = TrainConfig()
    values = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in names:
            raise ConfigError(f"{source}: unknown config field {key!r}; known: {', '.join(sorted(names))}")
        v = _coerce(key, value, getattr(defaults, key))
        if key in CHOICES and v not in CHOICES[key]:
            raise ConfigError(f"{source}: field {key!r} must be one of {CHOICES[key]}, got {v!r}")
        values[key] = v
    return dataclasses.replace(cfg, **values)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        bundled = Path(__file__).parent / "configs" / path.name
        alt = bundled if bundled.is_file() else Path(__file__).parent / "configs" / f"{path.name}.yaml"
        if not alt.is_file():
            raise ConfigError(f"{path}: config file not found (bundled recipes: {', '.join(list_recipes())})")
        path = alt
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def list_recipes() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def build_config(config_file: str | None, cli: dict[str, Any], sets: list[str] | None = None,
                 base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (defaults, or a resumed run's saved config) < ``config_file`` < ``cli`` flags < ``--set`` items."""
    cfg = base or TrainConfig()
    if config_file:
        cfg = apply_overrides(cfg, load_yaml(config_file), str(config_file))
    cfg = apply_overrides(cfg, {k: v for k, v in cli.items() if v is not None}, "command line")
    extra = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        extra[k.strip()] = yaml.safe_load(v)
    return apply_overrides(cfg, extra, "--set")


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A saved config (config.yaml or a checkpoint's). Runs saved before the fields were renamed still load:
    ``image_size`` was always a crop size (-> ``input_size`` with ``input_transform: crop``), the boolean
    ``pos_weight`` was the N/P positive weighting (-> ``loss_weighting: pos_ratio``), and their best.pt was
    chosen by validation AUROC (-> ``select: val_auroc``)."""
    d = dict(d)
    if "image_size" in d:
        d.setdefault("input_size", d.pop("image_size"))
        d.setdefault("input_transform", "crop")
        d.setdefault("select", "val_auroc")
    if "pos_weight" in d:
        d.setdefault("loss_weighting", "pos_ratio" if _coerce("pos_weight", d.pop("pos_weight"), False) else "none")
    return apply_overrides(TrainConfig(), d, "saved config")


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    from chexnet.fileio import atomic_write

    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
