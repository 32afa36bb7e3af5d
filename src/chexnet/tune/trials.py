"""One trial of a study: what every trial shares (:class:`TrialSetup`, called with an Optuna trial it is the
study's objective), training it in this process or in ``--nproc-per-trial`` worker processes (``chexnet
tune-trial``: :func:`trial_worker`), the pruning callback the training loop calls after each validation
(:class:`TrialReporter`) and the pruner; and :func:`check_trials_can_start`, what every trial needs, checked once
before the study starts."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chexnet import dist
from chexnet.choices import PRUNERS, SELECT_RULES
from chexnet.config import TrainConfig, apply_overrides, config_from_dict, save_config
from chexnet.searchspace import SearchSpace
from chexnet.tune._optuna import optuna_module
from chexnet.tune.storage import argv_without_passwords, frozen_trial, open_storage, study_and_trial_id

OBJECTIVES = SELECT_RULES  # a study optimises what its trials select best.pt by


class TrialFailed(RuntimeError):
    pass


def build_pruner(spec: dict):
    optuna = optuna_module()
    kind = spec["kind"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"],
                                           n_warmup_steps=spec["warmup_epochs"] + 1)  # steps are 1-based epochs
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["warmup_epochs"] + 1, max_resource=spec["max_epochs"],
                                              reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner must be one of {tuple(PRUNERS)}, got {kind!r}")


# ------------------------------------------------------------------------------------ before the first trial


def check_trials_can_start(base: TrainConfig, space: SearchSpace, cache: str | os.PathLike) -> None:
    """What every trial needs and can be known before the first one: the cache opens, has non-empty train and val
    splits and the config's labels, its images fit every input the space can draw, and every model the space can
    draw (arch x weights) can be built. An error (ValueError / RuntimeError) says what to fix; nothing is written.

    Building a model costs a second or two per architecture: with ImageNet weights already in the torch cache, or
    no pretrained weights, the architecture is built alone; with weights not cached yet the build downloads them
    (as the first trial would) or, offline, fails.
    """
    from chexnet.data.cache import load_cache
    from chexnet.preprocess import Preprocessing
    from chexnet.train import check_trainable_labels

    _, index, meta = load_cache(cache)
    check_trainable_labels(cache, index, meta, base.labels)
    counts = index["split"].value_counts()
    if not counts.get("train", 0):
        raise ValueError(f"{cache}: the train split is empty")
    if not counts.get("val", 0):
        raise ValueError(f"{cache}: the val split is empty: a trial is scored on validation (chexnet prepare "
                         f"--val-fraction)")
    for transform, size in itertools.product(_drawable(space, "input_transform", base.input_transform),
                                             _drawable(space, "input_size", base.input_size)):
        try:
            Preprocessing(cache_size=int(meta["size"]), input_size=int(size), input_transform=transform)
        except ValueError as exc:
            raise ValueError(f"{cache}: {exc}") from None
    for arch, weights in itertools.product(_drawable(space, "arch", base.arch), _drawable(space, "weights", base.weights)):
        _check_model(arch, weights, len(base.labels))


def _drawable(space: SearchSpace, field: str, base_value) -> tuple:
    """The values of ``field`` a trial can have: the space's choices, or bounds, or the base config's value."""
    for p in space.params:
        if p.name == field:
            return tuple(p.choices) if p.kind == "categorical" else (p.low, p.high)
    return (base_value,)


def _check_model(arch: str, weights: str, num_classes: int) -> None:
    from chexnet.models import WeightsUnavailable, create_model, imagenet_weights_path

    build = weights
    if weights == "imagenet":
        with contextlib.suppress(Exception):  # not a torchvision classifier: create_model says so below
            if imagenet_weights_path(arch)[1].is_file():
                build = "none"  # the weights are in the torch cache: the architecture alone is checked
    try:
        create_model(arch, build, num_classes)
    except Exception as exc:
        hint = (" (chexnet tune takes them as --set weights=none or --set weights=PATH, or from a recipe that sets "
                "them, e.g. --config demo)" if isinstance(exc, WeightsUnavailable) else "")
        raise RuntimeError(f"no trial can start: model {arch} with weights {weights}: "
                           f"{type(exc).__name__}: {exc}{hint}") from exc


# ------------------------------------------------------------------------------------------------- a trial


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one ``chexnet tune`` process shares. Called with an Optuna trial, it runs that trial
    (draw the space, train, read back what was reported) and returns its value: it is the study's objective."""

    base: TrainConfig
    space: SearchSpace
    objective: str  # an OBJECTIVES key: every trial selects its best.pt by it
    cache: str
    out: Path  # the study folder: trial N trains in out/trials/NNNN
    url: str  # the storage URL (the workers of a K-process trial open it again)
    study_name: str
    pruner: dict  # build_pruner's spec (the workers build the same pruner)
    storage: Any = dataclasses.field(repr=False, compare=False)  # this process's open RDBStorage
    nproc_per_trial: int = 1

    @property
    def trials_dir(self) -> Path:
        return Path(self.out) / "trials"

    def __call__(self, trial) -> float:
        optuna = optuna_module()
        run_dir = self.trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir.resolve()))
        trial.set_user_attr("host", f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = self.space.suggest(trial)
            cfg = dataclasses.replace(apply_overrides(self.base, params, f"trial {trial.number}"), select=self.objective)
            trial.set_user_attr("config", cfg.to_dict())
            self.train(trial, cfg, run_dir)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            message = (self._frozen(trial).user_attrs.get("error")
                       or ("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"))
            trial.set_user_attr("error", message)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise TrialFailed(message) from exc
        ft = self._frozen(trial)
        if "pruned_after_epoch" in ft.user_attrs:
            raise optuna.TrialPruned(f"pruned after epoch {ft.user_attrs['pruned_after_epoch']}")
        values = [v for v in ft.intermediate_values.values() if math.isfinite(v)]
        if not values:
            message = (f"no finite {self.objective} was measured (empty validation split, eval_every > epochs, "
                       f"or an AUROC undefined on this validation split)")
            trial.set_user_attr("error", message)
            raise TrialFailed(message)
        return min(values) if OBJECTIVES[self.objective].direction == "minimize" else max(values)

    def _frozen(self, trial):
        """The trial as stored (what the training's reporter, maybe another process, wrote into it)."""
        return frozen_trial(self.storage, self.study_name, trial.number)

    def train(self, trial, cfg: TrainConfig, run_dir: Path) -> None:
        """Train one trial in this process, or in ``--nproc-per-trial`` worker processes."""
        if self.nproc_per_trial > 1:
            from chexnet import ps
            from chexnet.launch.local import spawn

            ps.check(cfg, self.nproc_per_trial)  # --set strategy=ps: K of the trial's processes are servers
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")  # the workers read it (train writes the same file again)
            spawn(self.nproc_per_trial, ["tune-trial", "--storage", self.url, "--study-name", self.study_name,
                                         "--trial", str(trial.number), "--pruner", json.dumps(self.pruner),
                                         "--cache", str(self.cache), "--out", str(run_dir)],
                  roles=ps.role_names(cfg, self.nproc_per_trial))  # a failed process named with its role
        else:
            from chexnet.train import train

            with argv_without_passwords():  # run.json records argv: chexnet tune ... --storage URL
                train(cfg, self.cache, run_dir, progress=False, epoch_callback=TrialReporter(trial, cfg.select))


# ------------------------------------------------------------------------------------ reporting from training


class TrialReporter:
    """The epoch callback of a trial's training (rank 0): report the objective, say whether to stop.

    ``trial`` is an Optuna Trial, or a function returning one (a worker process attaches on first use, so
    that only rank 0 ever opens the storage).
    """

    def __init__(self, trial, metric: str):
        self._trial, self.key = trial, OBJECTIVES[metric].metric

    @property
    def trial(self):
        if callable(self._trial):
            self._trial = self._trial()
        return self._trial

    def __call__(self, record: dict) -> bool:
        value = record.get(self.key)
        if value is None or not math.isfinite(value):
            return False  # e.g. AUROC undefined on a validation split without positives: nothing to judge by
        epoch = int(record["epoch"])
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_after_epoch", epoch)
            return True
        return False


def trial_worker(storage: str, study_name: str, number: int, pruner: dict, cache: str, run: str) -> None:
    """One of K processes training trial ``number`` (``chexnet tune-trial``, started by ``TrialSetup.train``)."""
    optuna = optuna_module()
    cfg = config_from_dict(yaml.safe_load((Path(run) / "config.yaml").read_text()))
    is_main = dist.detect().is_main
    rdb = None

    def attach():
        nonlocal rdb
        rdb = rdb or open_storage(storage, heartbeat=False)  # the parent process keeps the heartbeat
        study = optuna.load_study(study_name=study_name, storage=rdb, pruner=build_pruner(pruner))
        return optuna.trial.Trial(study, study_and_trial_id(rdb, study_name, number)[1])

    from chexnet.train import train

    try:
        with argv_without_passwords():  # run.json records argv: chexnet tune-trial --storage URL ...
            train(cfg, cache, run, progress=False, epoch_callback=TrialReporter(attach, cfg.select))
    except Exception as exc:
        if is_main:  # the parent records this message (the launcher only knows the exit code)
            with contextlib.suppress(Exception):
                attach().set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
