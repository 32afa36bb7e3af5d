"""Search spaces for ``chexnet tune``: YAML files in which every key is a TrainConfig field.

::

    optimizer:  {type: categorical, choices: [adam, sgd, adadelta, adamw]}
    lr:         {type: float, low: 1.0e-5, high: 1.0, log: true}
    batch_size: {type: categorical, choices: [8, 16, 32]}
    plateau_patience: {type: int, low: 1, high: 3}
    warmup_epochs:    {type: float, low: 0.0, high: 2.0, step: 0.5}

``categorical`` takes ``choices`` (strings, numbers, booleans); ``int`` and ``float`` take ``low`` and ``high``
(inclusive) and optionally ``log: true`` (sample the logarithm uniformly) or a ``step``. Anything ``chexnet
train`` accepts can be searched; fixed values belong in the recipe (``--config``) or ``--set``. Spaces bundled
in ``chexnet/spaces/`` are named without their ``.yaml`` (``--space report``).

A space is checked completely before any trial runs: a wrong key, type, bound or choice is an error that names
the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chexnet.config import ConfigError, TrainConfig, apply_overrides

SPACES_DIR = Path(__file__).parent / "spaces"
SETTINGS = {"categorical": ("type", "choices"), "int": ("type", "low", "high", "log", "step"),
            "float": ("type", "low", "high", "log", "step")}
# fields a study must not vary: they define what is measured, not how a model is trained
NOT_SEARCHABLE = {"select": "the objective decides which epoch is best (chexnet tune --objective)",
                  "labels": "every trial must predict the same pathologies to be compared"}


@dataclass(frozen=True)
class Param:
    """One searched field: ``kind`` categorical (``choices``), int or float (``low``..``high``, ``log``, ``step``)."""

    name: str
    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        how = " log" if self.log else (f" step {self.step:g}" if self.step else "")
        return f"{self.name} {self.kind} [{self.low:g}, {self.high:g}]{how}"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    params: tuple[Param, ...]

    def suggest(self, trial) -> dict[str, Any]:
        """Draw one value per field from an Optuna trial: a dict of TrainConfig overrides."""
        return {p.name: p.suggest(trial) for p in self.params}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """A space from a YAML file, or a bundled one by name (``report``, ``demo``)."""
    path = Path(name_or_path)
    if not path.is_file():
        bundled = SPACES_DIR / f"{path.name}.yaml"
        if not bundled.is_file():
            raise ConfigError(f"search space {str(name_or_path)!r}: no such file, nor a bundled space "
                              f"(bundled: {', '.join(list_spaces())})")
        path = bundled
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path}: not valid YAML: {exc}") from exc
    return parse_space(data, str(path), name=path.stem)


def parse_space(data: Any, source: str, name: str = "space") -> SearchSpace:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"search space {source}: expected a mapping of config fields to "
                          f"{{type: categorical|int|float, ...}}, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    params = []
    for key, spec in data.items():
        field = str(key).replace("-", "_")
        where = f"search space {source}: key {key!r}"
        if field not in fields:
            raise ConfigError(f"{where} is not a config field (known: {', '.join(sorted(fields))})")
        if field in NOT_SEARCHABLE:
            raise ConfigError(f"{where} cannot be searched: {NOT_SEARCHABLE[field]}")
        params.append(_param(field, spec, where))
    return SearchSpace(name, source, tuple(params))


def _param(field: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with 'type' (categorical, int or float), got {spec!r} "
                          f"(fixed values belong in the recipe, --config, or --set)")
    kind = spec["type"]
    if kind not in SETTINGS:
        raise ConfigError(f"{where}: unknown type {kind!r} (use categorical, int or float)")
    unknown = sorted(set(spec) - set(SETTINGS[kind]))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))} for type {kind} "
                          f"(allowed: {', '.join(SETTINGS[kind])})")
    if kind == "categorical":
        return Param(field, kind, choices=_choices(field, spec.get("choices"), where))
    return _numeric(field, kind, spec, where)


def _choices(field: str, choices: Any, where: str) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
    for c in choices:
        if not isinstance(c, (str, int, float, bool)):
            raise ConfigError(f"{where}: choice {c!r} is not a string, number or boolean")
        _check_value(field, c, where, f"choice {c!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: 'choices' has duplicates: {choices!r}")
    if field == "arch":
        _check_archs(choices, where)
    return tuple(choices)


def _numeric(field: str, kind: str, spec: dict, where: str) -> Param:
    default = getattr(TrainConfig(), field)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ConfigError(f"{where}: field {field!r} is not a number ({type(default).__name__}): use type categorical")
    if kind == "float" and isinstance(default, int):
        raise ConfigError(f"{where}: field {field!r} is an integer: use type int (or categorical)")
    bounds = {}
    for b in ("low", "high"):
        if b not in spec:
            raise ConfigError(f"{where}: type {kind} needs '{b}'")
        bounds[b] = _number(spec[b], kind, where, b)
    low, high = bounds["low"], bounds["high"]
    if low > high:
        raise ConfigError(f"{where}: low ({low:g}) is above high ({high:g})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}")
    step = _number(spec["step"], kind, where, "step") if spec.get("step") is not None else None
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: 'step' must be positive, got {step:g}")
    if log and step not in (None, 1):
        raise ConfigError(f"{where}: 'log' and 'step' cannot be combined")
    if log and (low <= 0 or (kind == "int" and low < 1)):
        raise ConfigError(f"{where}: a log scale needs low > 0{' (>= 1 for int)' if kind == 'int' else ''}, got {low:g}")
    for b, v in (("low", low), ("high", high)):
        _check_value(field, v, where, f"{b} {v:g}")
    return Param(field, kind, low=low, high=high, log=log, step=step)


def _number(value: Any, kind: str, where: str, what: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: '{what}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: '{what}' must be a finite number, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise ConfigError(f"{where}: '{what}' must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


def _check_value(field: str, value: Any, where: str, what: str) -> None:
    """Is ``value`` acceptable for ``field`` as ``chexnet train`` would take it (type, allowed choices)?"""
    try:
        apply_overrides(TrainConfig(), {field: value}, "space")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {what} is not valid: {str(exc).removeprefix('space: ')}") from None


def _check_archs(choices: list, where: str) -> None:
    from torchvision.models import list_models

    known = set(list_models())
    bad = [c for c in choices if c not in known]
    if bad:
        raise ConfigError(f"{where}: {', '.join(map(repr, bad))} is not a torchvision model "
                          f"(torchvision.models.list_models())")
