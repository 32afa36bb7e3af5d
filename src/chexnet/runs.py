"""The run API: a run directory (``chexnet train --out``) -> its model, config, preprocessing, thresholds and cache.

Every command that uses a trained model (evaluate, predict, export, localize, serve, explain) loads it through
here; none of them depends on another command's module. A run directory holds (see ``chexnet.checkpoint``)::

    RUN/run.json             where it was trained from (cache, labels, preprocessing, launcher, versions)
    RUN/config.yaml          the resolved TrainConfig
    RUN/checkpoints/         last.pt, best.pt (loaded with weights_only=True)
    RUN/thresholds.json      the operating points chosen on the validation split for one checkpoint (below)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from chexnet.checkpoint import (
    check_recorded_digest,
    ckpt_position,
    ckpt_preprocessing,
    load_checkpoint,
    resolve_checkpoint,
)
from chexnet.config import config_from_dict
from chexnet.data.cache import cache_labels, index_sha256, load_cache
from chexnet.fileio import atomic_write
from chexnet.labels import PATHOLOGIES
from chexnet.models import create_model
from chexnet.preprocess import Preprocessing


@dataclass
class LoadedRun:
    """A run's model (on the CPU, eval mode) and what belongs with it."""

    model: object
    cfg: object  # TrainConfig
    path: Path  # the checkpoint file
    spec: Preprocessing | None  # None only for runs saved before checkpoints carried their preprocessing
    epoch: int
    global_step: int

    @property
    def described(self) -> str:
        """The checkpoint file with its epoch and step, e.g. ``best.pt (epoch 3, step 1200)``."""
        return f"{self.path.name} (epoch {self.epoch}, step {self.global_step})"


def load_run_model(run: str | Path, checkpoint: str = "best", require_spec: bool = False,
                   trust_changed: bool = False) -> LoadedRun:
    """Load a run directory's checkpoint (``best``, ``last`` or a PATH) into its model. ``require_spec``: refuse a
    checkpoint saved before checkpoints carried their preprocessing (predict, export and localize need it; evaluate
    can take it from the cache). A damaged checkpoint, or one whose SHA-256 run.json does not record (changed since
    it was written), is a :class:`chexnet.checkpoint.CheckpointError`; ``trust_changed`` loads the latter anyway."""
    run = Path(run)
    path = resolve_checkpoint(run, checkpoint)
    state = load_checkpoint(path)  # a damaged file is named as such before its digest is compared
    check_recorded_digest(run, path, trust_changed)
    preprocessing = ckpt_preprocessing(state)
    if require_spec and not preprocessing:
        raise ValueError(f"{path}: saved before checkpoints carried their preprocessing; evaluate it with its cache, "
                         f"or retrain")
    cfg_dict = state.get("config") or yaml.safe_load((run / "config.yaml").read_text())  # old: only config.yaml
    cfg = config_from_dict(cfg_dict)
    model = create_model(cfg.arch, "none", len(cfg.labels), cfg.head_bias_init)
    model.load_state_dict(state["model"])
    spec = Preprocessing.from_dict(preprocessing) if preprocessing else None
    return LoadedRun(model.eval(), cfg, path, spec, *ckpt_position(state))


def resolve_cache(run: Path, run_info: dict, cache: str | Path | None, spec: Preprocessing | None):
    """(path, images, index, meta) of the cache to evaluate on: ``cache`` if given, else the one recorded in run.json;
    checked against the run (image size; at least one of its labels). The run's labels the cache lacks are missing
    in every row (reported as not in this dataset, never scored) and said on stderr; other split sizes only warn."""
    if cache is None:
        cache = Path(run_info["cache"])
        if not (cache / "meta.json").is_file():
            raise FileNotFoundError(f"{run}: the run's cache {cache} (recorded in run.json) does not exist here; "
                                    f"was the run moved or copied? Pass --cache CACHE (a cache prepared from the same "
                                    f"data with the same --size)")
    cache = Path(cache)
    images, index, meta = load_cache(cache)
    problems = []
    want_size = spec.cache_size if spec is not None else run_info.get("cache_size")
    if want_size is not None and int(meta["size"]) != int(want_size):
        problems.append(f"its images are {meta['size']} px, the run was trained on {want_size} px "
                        f"(prepare one with --size {want_size})")
    labels = run_info.get("labels") or list(PATHOLOGIES)
    missing = [n for n in labels if n not in cache_labels(meta)]
    if len(missing) == len(labels):
        problems.append(f"it has none of the run's labels ({', '.join(labels)}; it has {', '.join(cache_labels(meta))})")
    if problems:
        raise ValueError(f"{cache} does not match run {run}: " + "; ".join(problems))
    if missing:
        print(f"note: {cache} has no {', '.join(missing)} (labels of the run): not in this dataset, not scored",
              file=sys.stderr)
    splits = run_info.get("cache_splits")
    if splits and {k: v.get("images") for k, v in splits.items()} != {k: v.get("images") for k, v in meta["splits"].items()}:
        print(f"warning: {cache} has other split sizes than the run's training cache "
              f"({_split_sizes(meta['splits'])} now, {_split_sizes(splits)} then): another split or data set",
              file=sys.stderr)
    return cache, images, index, meta


def is_other_data(run_info: dict, cache: Path, meta: dict) -> bool:
    """True when ``cache`` holds other data than the run was trained on (another data set or another preparation),
    not the run's own cache moved or copied: by the index digest run.json records (runs from before it: by split
    sizes)."""
    if run_info.get("cache_index_sha256"):
        return index_sha256(cache) != run_info["cache_index_sha256"]
    splits = run_info.get("cache_splits")
    return bool(splits) and ({k: v.get("images") for k, v in splits.items()}
                             != {k: v.get("images") for k, v in meta["splits"].items()})


def training_overlap(run_info: dict, cache: Path, meta: dict, rows) -> tuple[list[str], list[str]] | None:
    """The images (by name) and the patients (by :func:`chexnet.data.combine.patient_keys`: NIH's family shares
    patients, a public data set's ids are its own, a hospital's mean something only in its cache) of ``rows`` (an
    index frame of ``cache``) that the run trained or selected its model on (its training cache's train and val
    splits; a combined cache's parts included). None when that cache is not here to check."""
    from chexnet.data.combine import patient_keys

    trained = Path(run_info.get("cache", ""))
    if not (trained / "meta.json").is_file():
        return None
    _, index, trained_meta = load_cache(trained)
    seen = index["split"].isin(["train", "val"]).to_numpy()
    images = sorted(set(rows["image"]) & set(index.loc[seen, "image"]))
    theirs = set(patient_keys(trained, trained_meta, index)[seen])
    patients = sorted(set(patient_keys(cache, meta, rows)) & theirs)
    return images, patients


def _split_sizes(splits: dict) -> str:
    return ", ".join(f"{k} {v.get('images')}" for k, v in splits.items())



THRESHOLDS = "thresholds.json"


def save_thresholds(run: Path, loaded: LoadedRun, table, method: str, calibrator=None) -> None:
    """RUN/thresholds.json: the per-label operating points (the run's labels, ``loaded.cfg.labels``) chosen on the
    validation split for this checkpoint (``chexnet predict`` and ``chexnet export`` pick them up; they belong to
    that checkpoint only): ``thresholds`` of the evaluation's ``method``, and ``rules`` ({rule: {label: t}}, every
    operating-point rule evaluated, ``table.attrs["rule_thresholds"]``). Always on the model's own (raw)
    probabilities: thresholds chosen on calibrated ones (``calibrator``) are mapped back."""
    names = list(loaded.cfg.labels)

    def raw(values) -> dict:
        values = np.minimum(np.asarray(values, np.float64), 1.0)  # +inf (nothing positive): 1.0, kept by the map
        if calibrator is not None:
            values = calibrator.unmap_thresholds(values)
        return {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values)}

    rules = {rule: raw(t) for rule, t in (table.attrs.get("rule_thresholds") or {}).items()}
    atomic_write(run / THRESHOLDS, json.dumps({
        "checkpoint": loaded.path.name, "epoch": loaded.epoch, "global_step": loaded.global_step,
        "method": method, "chosen_on": "val", "scale": "raw", "thresholds": raw(table.loc[names, "threshold"]),
        "rules": rules}, indent=2) + "\n")


def saved_rule_thresholds(run: Path, loaded: LoadedRun) -> dict:
    """{rule: {label: raw threshold}} from RUN/thresholds.json when it belongs to ``loaded``'s checkpoint, else {}."""
    saved = Path(run) / THRESHOLDS
    if not saved.is_file():
        return {}
    info = json.loads(saved.read_text())
    if (info.get("epoch"), info.get("global_step")) != (loaded.epoch, loaded.global_step):
        return {}
    return dict(info.get("rules") or {})


def saved_thresholds(run: Path, loaded: LoadedRun) -> tuple[dict | None, str | None, str]:
    """(thresholds, method, note) from RUN/thresholds.json when it belongs to ``loaded``'s checkpoint; else
    (None, None, why: no file, or the checkpoint it belongs to). Read by predict and export."""
    saved = Path(run) / THRESHOLDS
    if not saved.is_file():
        return None, None, ""
    info = json.loads(saved.read_text())
    if (info.get("epoch"), info.get("global_step")) != (loaded.epoch, loaded.global_step):
        return None, None, f"{saved.name} belongs to another checkpoint ({info.get('checkpoint')})"
    method = info.get("method", "f1")
    return info.get("thresholds"), method, f"validation thresholds (max {method}) of {loaded.path.name}"
