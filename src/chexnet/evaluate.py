"""``chexnet evaluate``: run a trained model over a split and write predictions, metrics, tables and plots.

Runs distributed too (``--nproc N`` or any launcher): every rank predicts a strided shard, the shards are
gathered, and rank 0 writes ``RUN/eval/<split>/``. The rows are identical whatever the number of processes.
When the split is ``test``, validation predictions are made as well: the operating thresholds
(sensitivity / specificity / F1) are chosen on them, never on the test set.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from chexnet import dist
from chexnet.checkpoint import load_checkpoint, read_run_info, resolve_checkpoint
from chexnet.config import config_from_dict
from chexnet.data.cache import load_cache
from chexnet.data.dataset import open_split
from chexnet.engine import StepContext, predict_distributed
from chexnet.labels import PATHOLOGIES
from chexnet.models import create_model
from chexnet.preprocess import Preprocessing, input_transform

TTA_MODES = {"none": "eval", "hflip": "hflip", "tencrop": "tencrop"}


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


def load_run_model(run: str | Path, checkpoint: str = "best", require_spec: bool = False) -> LoadedRun:
    """Load a run directory's checkpoint (``best``, ``last`` or a PATH) into its model. ``require_spec``: refuse a
    checkpoint saved before checkpoints carried their preprocessing (predict, export and localize need it; evaluate
    can take it from the cache)."""
    run = Path(run)
    path = resolve_checkpoint(run, checkpoint)
    state = load_checkpoint(path)
    if require_spec and not state.get("preprocessing"):
        raise ValueError(f"{path}: saved before checkpoints carried their preprocessing; evaluate it with its cache, "
                         f"or retrain")
    cfg_dict = state.get("config") or yaml.safe_load((run / "config.yaml").read_text())
    cfg = config_from_dict(cfg_dict)
    model = create_model(cfg.arch, "none", len(cfg.labels), cfg.head_bias_init)
    model.load_state_dict(state["model"])
    spec = Preprocessing.from_dict(state["preprocessing"]) if state.get("preprocessing") else None
    return LoadedRun(model.eval(), cfg, path, spec, int(state.get("epoch", 0)), int(state.get("global_step", 0)))


def resolve_cache(run: Path, run_info: dict, cache: str | Path | None, spec: Preprocessing | None):
    """(path, images, index, meta) of the cache to evaluate on: ``cache`` if given, else the one recorded in run.json;
    checked against the run (image size, labels; other split sizes only warn)."""
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
    missing = [n for n in labels if n not in meta.get("pathologies", [])]
    if missing:
        problems.append(f"it has no labels for {missing}, which the run was trained on")
    if problems:
        raise ValueError(f"{cache} does not match run {run}: " + "; ".join(problems))
    splits = run_info.get("cache_splits")
    if splits and {k: v.get("images") for k, v in splits.items()} != {k: v.get("images") for k, v in meta["splits"].items()}:
        print(f"warning: {cache} has other split sizes than the run's training cache "
              f"({_split_sizes(meta['splits'])} now, {_split_sizes(splits)} then): another split or data set",
              file=sys.stderr)
    return cache, images, index, meta


def _split_sizes(splits: dict) -> str:
    return ", ".join(f"{k} {v.get('images')}" for k, v in splits.items())


def predict_split(model, cfg, cache: Path, index, meta, split: str, tta: str, info, ctx, batch_size: int):
    dataset = open_split(cache, index, meta, split, TTA_MODES[tta], cfg.input_size, cfg.input_transform,
                         labels=cfg.labels)
    if len(dataset) == 0:
        raise ValueError(f"{cache}: the {split} split is empty")
    probs = predict_distributed(model, dataset, info, ctx, batch_size=batch_size, workers=cfg.workers,
                                show_progress=info.is_main)
    rows = index.iloc[dataset.rows]
    return rows, probs, dataset.labels


def evaluate_run(run: str | Path, checkpoint: str = "best", split: str = "test", tta: str = "none",
                 batch_size: int = 64, n_resamples: int = 1000, threshold_method: str = "f1",
                 cache: str | Path | None = None):
    """Evaluate ``run`` on ``split``; rank 0 writes RUN/eval/<split>/ and returns the table (others None).

    ``cache``: evaluate on this cache instead of the one recorded in run.json (a moved or copied run); it must
    match the run's image size and labels.
    """
    from chexnet import report

    info, device = dist.init()
    try:
        run = Path(run)
        run_info = read_run_info(run)
        loaded = load_run_model(run, checkpoint)
        model, cfg, path, spec = loaded.model, loaded.cfg, loaded.path, loaded.spec
        if tuple(cfg.labels) != PATHOLOGIES:
            raise ValueError(f"{run}: trained on {len(cfg.labels)} labels ({', '.join(cfg.labels)}); evaluation and "
                             f"its reports cover the 14 NIH pathologies only (predict and localize work on any set)")
        cache, _, index, meta = resolve_cache(run, run_info, cache, spec)
        if spec is None:  # a run saved before checkpoints carried their preprocessing
            spec = Preprocessing(int(meta["size"]), cfg.input_size, cfg.input_transform)
        model.to(device)
        ctx = StepContext(device, cfg.precision, cfg.channels_last, transform=input_transform(spec).to(device))
        frames, attributes = {}, None
        for name in dict.fromkeys([split, "val"] if split == "test" else [split]):
            rows, probs, labels = predict_split(model, cfg, cache, index, meta, name, tta, info, ctx, batch_size)
            if info.is_main:  # every rank predicted its shard; only rank 0 writes
                frames[name] = report.predictions_frame(rows["image"].to_numpy(), rows["patient_id"].to_numpy(),
                                                        probs, labels)
                if name == split:
                    attributes = rows[["sex", "age", "view"]].reset_index(drop=True)
        if not info.is_main:
            return None
        for name, frame in frames.items():
            (run / "eval" / name).mkdir(parents=True, exist_ok=True)
            report.write_predictions(frame, run / "eval" / name / "predictions.csv")
        selection = _selection_note(cfg, path, checkpoint)
        context = {"run": str(run), "checkpoint": str(path), "selected by": selection, "split": split, "tta": tta,
                   "arch": cfg.arch, "input": f"{spec.input_transform} {spec.cache_size} -> {spec.input_size} px",
                   "processes": info.world_size, "cache": str(cache)}
        table = report.write_evaluation(run / "eval" / split, frames[split], frames.get("val"),
                                        threshold_method=threshold_method, n_resamples=n_resamples, context=context,
                                        attributes=attributes)
        if table.attrs.get("threshold_source") == "validation":
            save_thresholds(run, loaded, table, threshold_method)
        print(f"{run} [{split}, checkpoint {path.name} ({selection}), tta {tta}]")
        print(report.format_table(table))
        print(f"wrote {run / 'eval' / split}/ (predictions.csv, metrics.json, auroc.csv, subgroups.csv, report.md, "
              f"roc.png, pr.png, auroc_vs_published.png)", file=sys.stderr)
        return table
    finally:
        dist.teardown()


THRESHOLDS = "thresholds.json"


def save_thresholds(run: Path, loaded: LoadedRun, table, method: str) -> None:
    """RUN/thresholds.json: the per-pathology operating points chosen on the validation split for this checkpoint
    (``chexnet predict`` and ``chexnet export`` pick them up; they belong to that checkpoint only)."""
    import json

    from chexnet.fileio import atomic_write

    thresholds = {name: (None if table.loc[name, "threshold"] != table.loc[name, "threshold"] else
                         float(table.loc[name, "threshold"])) for name in PATHOLOGIES}
    atomic_write(run / THRESHOLDS, json.dumps({
        "checkpoint": loaded.path.name, "epoch": loaded.epoch, "global_step": loaded.global_step,
        "method": method, "chosen_on": "val", "thresholds": thresholds}, indent=2) + "\n")


def saved_thresholds(run: Path, loaded: LoadedRun) -> tuple[dict | None, str | None, str]:
    """(thresholds, method, note) from RUN/thresholds.json when it belongs to ``loaded``'s checkpoint; else
    (None, None, why: no file, or the checkpoint it belongs to). Read by predict and export."""
    import json

    saved = Path(run) / THRESHOLDS
    if not saved.is_file():
        return None, None, ""
    info = json.loads(saved.read_text())
    if (info.get("epoch"), info.get("global_step")) != (loaded.epoch, loaded.global_step):
        return None, None, f"{saved.name} belongs to another checkpoint ({info.get('checkpoint')})"
    method = info.get("method", "f1")
    return info.get("thresholds"), method, f"validation thresholds (max {method}) of {loaded.path.name}"


def _selection_note(cfg, path: Path, checkpoint: str) -> str:
    from chexnet.checkpoint import SELECT_RULES

    if checkpoint == "best":
        return f"best.pt: {SELECT_RULES[cfg.select][1]}"
    if checkpoint == "last":
        return "last.pt: the newest state (not a selected model)"
    return f"{path} given on the command line"


def compare(runs: list[str], split: str = "test", out: str | None = None, n_resamples: int = 2000, seed: int = 0):
    """Compare evaluated runs on the same images (``chexnet evaluate`` first). Prints and returns the table."""
    from chexnet import report

    csvs = []
    for r in runs:
        path = Path(r) / "eval" / split / "predictions.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{r}: no {split} predictions ({path}); run `chexnet evaluate {r} --split {split}` first")
        csvs.append((Path(r).name or str(r), path))
    out_dir = Path(out) if out else Path(runs[-1]) / "eval" / split / "compare"
    table, text = report.compare_runs(csvs, out_dir=out_dir, n_resamples=n_resamples, seed=seed)
    print(report.format_table(table))
    print(text)
    print(f"wrote {out_dir}/", file=sys.stderr)
    return table


__all__ = ["evaluate_run", "compare", "load_run_model"]
