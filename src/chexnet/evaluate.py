"""``chexnet evaluate``: run a trained model over a split and write predictions, metrics, tables and plots.

Runs distributed too (``--nproc N`` or any launcher): every rank predicts a strided shard, the shards are
gathered, and rank 0 writes ``RUN/eval/<split>/``. The rows are identical whatever the number of processes.
When the split is ``test``, validation predictions are made as well: the operating thresholds
(sensitivity / specificity / F1) are chosen on them, never on the test set. A cache whose meta.json records
derived labels (:mod:`chexnet.derived`, e.g. nih-google's ``Nodule or mass`` = max(Nodule, Mass)) has them
scored too, by their rules over the run's probabilities, marked as derived in every output.
Every output covers the run's own labels (its ``cfg.labels``, in its order: NIH's 14 by default, or any labels
of the vocabulary it was trained on); published AUROCs stand beside the labels that have one (NIH's 14).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from chexnet import derived as derived_labels
from chexnet import dist
from chexnet.checkpoint import read_run_info
from chexnet.choices import SELECT_RULES, TTA_MODES
from chexnet.data.cache import cache_labels
from chexnet.data.combine import row_sources
from chexnet.data.dataset import open_split
from chexnet.engine import StepContext, predict_distributed
from chexnet.preprocess import Preprocessing, input_transform
from chexnet.runs import (
    is_other_data,
    load_run_model,
    resolve_cache,
    save_thresholds,
    saved_rule_thresholds,
    saved_thresholds,
    training_overlap,
)

DEFAULT_RULES = ("f1", "youden", "sensitivity=0.9", "specificity=0.9")  # operating points measured by default

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
                 cache: str | Path | None = None, allow_overlap: bool = False, trust_changed: bool = False,
                 raw: bool = False, rules=DEFAULT_RULES, plots: bool = True):
    """Evaluate ``run`` on ``split``; rank 0 writes RUN/eval/<split>/ and returns the table (others None).
    Without ``plots`` the figures (roc.png, pr.png, auroc_vs_published.png, reliability.png) are not drawn.

    Where ``chexnet calibrate`` fitted a calibrator for the checkpoint, the probabilities evaluated (and written)
    are calibrated, unless ``raw``; AUROC does not change, calibration.csv shows what it did. ``rules``: the
    operating-point rules (:mod:`chexnet.operating_points`) chosen on validation and measured on the split
    (operating_points.csv); all are saved in thresholds.json (on the raw scale).

    ``cache``: evaluate on this cache instead of the one recorded in run.json: the run's own data moved or copied
    (same index.csv: results in RUN/eval/<split>/ as usual), or other data (another data set, external
    validation: RUN/eval/external/<cache folder name>/<split>/; its operating points are the run's own, from
    thresholds.json, and its val split is not used, so a cache of test images only works).
    Its image size must be the run's; the run's labels it lacks are not scored. An external split that shares
    images (or, between NIH's sources, patients) with the run's train and val splits is refused, naming them,
    unless ``allow_overlap``. The cache's derived labels (:func:`chexnet.derived.applicable`: its meta.json's
    rules whose labels the run has) are scored as well, AUROC and AUPRC only (:func:`chexnet.report.derived_table`);
    the others are named on stderr.
    """
    from chexnet import predictions, report

    info, device = dist.init()
    try:
        run = Path(run)
        run_info = read_run_info(run)
        loaded = load_run_model(run, checkpoint, trust_changed=trust_changed)
        model, cfg, path, spec = loaded.model, loaded.cfg, loaded.path, loaded.spec
        cal = _calibrator(run, loaded, raw)
        rules = list(dict.fromkeys([threshold_method, *rules]))
        cache, _, index, meta = resolve_cache(run, run_info, cache, spec)
        external = is_other_data(run_info, cache, meta)
        out = run / "eval" / "external" / cache.resolve().name if external else run / "eval"
        overlap_note = _check_overlap(run, run_info, cache, meta, index, split, allow_overlap) if external else ""
        derived = _derived_labels(cache, meta, cfg.labels)
        if spec is None:  # a run saved before checkpoints carried their preprocessing
            spec = Preprocessing(int(meta["size"]), cfg.input_size, cfg.input_transform)
        model.to(device)
        ctx = StepContext(device, cfg.precision, cfg.channels_last, transform=input_transform(spec).to(device))
        frames, attributes, derived_y = {}, None, None
        # another data set keeps the run's operating points (chosen on its own validation split), so no val pass
        for name in dict.fromkeys([split, "val"] if split == "test" and not external else [split]):
            rows, probs, labels = predict_split(model, cfg, cache, index, meta, name, tta, info, ctx, batch_size)
            if cal is not None:
                probs = cal.apply(probs)
            if info.is_main:  # every rank predicted its shard; only rank 0 writes
                frames[name] = predictions.predictions_frame(rows["image"].to_numpy(), rows["patient_id"].to_numpy(),
                                                        probs, labels, names=cfg.labels)
                if name == split:
                    attributes = rows[["sex", "age", "view"]].reset_index(drop=True)
                    attributes["source"] = row_sources(meta)[rows.index.to_numpy()]  # subgroups where several
                    derived_y = rows[[d.name for d in derived]].to_numpy(np.float64)
        if not info.is_main:
            return None
        for name, frame in frames.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            predictions.write_predictions(frame, out / name / "predictions.csv")
        selection = _selection_note(cfg, path, checkpoint)
        context = {"run": str(run), "checkpoint": str(path), "selected by": selection, "split": split, "tta": tta,
                   "arch": cfg.arch, "input": f"{spec.input_transform} {spec.cache_size} -> {spec.input_size} px",
                   "processes": info.world_size, "cache": str(cache),
                   "data": (f"external: {meta.get('arguments', {}).get('dataset', 'nih')} cache {cache}, not the "
                            f"run's training data{overlap_note}" if external else "the run's own cache")}
        if derived:
            context["derived labels"] = "; ".join(f"{d.name} = {d.text} (not a model output)" for d in derived)
        context["probabilities"] = (f"calibrated: {cal.describe()} (--raw: the model's own)" if cal is not None
                                    else "the model's own (no calibrator for this checkpoint)")
        run_thresholds = _run_thresholds(run, loaded, cal) if external else None
        rule_thresholds = _run_rule_thresholds(run, loaded, cal) if external else None
        table = report.write_evaluation(out / split, frames[split], frames.get("val"),
                                        threshold_method=threshold_method, n_resamples=n_resamples, context=context,
                                        attributes=attributes, thresholds=run_thresholds, derived=derived,
                                        derived_y=derived_y, rules=rules, rule_thresholds=rule_thresholds,
                                        calibrated=cal.method if cal is not None else None, plots=plots)
        if table.attrs.get("threshold_source") == "validation" and not external:
            save_thresholds(run, loaded, table, threshold_method, cal)
        print(f"{run} [{split}, checkpoint {path.name} ({selection}), tta {tta}]")
        print(report.format_table(table))
        figures = ", roc.png, pr.png, auroc_vs_published.png, reliability.png" if plots else ""
        print(f"wrote {out / split}/ (predictions.csv, {'derived.csv, ' if derived else ''}metrics.json, auroc.csv, "
              f"subgroups.csv, calibration.csv, operating_points.csv, report.md{figures})", file=sys.stderr)
        return table
    finally:
        dist.teardown()


def _calibrator(run: Path, loaded, raw: bool):
    """The run's calibrator for this checkpoint (None with ``raw``, or where there is none: said on stderr when
    one belongs to another checkpoint)."""
    from chexnet.calibrator import saved_calibrator

    if raw:
        return None
    cal, note = saved_calibrator(run, loaded)
    if cal is None and note:
        print(f"note: {note}", file=sys.stderr)
    return cal


def _run_thresholds(run: Path, loaded, cal=None) -> list | None:
    """The run's own operating points (thresholds.json, when it belongs to this checkpoint), one per label of
    the run in its order, NaN for a label without one, mapped through ``cal`` when the probabilities are
    calibrated; None without such a file."""
    chosen, _, _ = saved_thresholds(run, loaded)
    if chosen is None:
        return None
    values = [np.nan if chosen.get(n) is None else chosen[n] for n in loaded.cfg.labels]
    return list(cal.map_thresholds(values)) if cal is not None else values


def _run_rule_thresholds(run: Path, loaded, cal=None) -> dict | None:
    """thresholds.json's rules ({rule: one threshold per run label}, mapped through ``cal``); None without any."""
    rules = saved_rule_thresholds(run, loaded)
    out = {}
    for rule, chosen in rules.items():
        values = [np.nan if chosen.get(n) is None else chosen[n] for n in loaded.cfg.labels]
        out[rule] = np.asarray(cal.map_thresholds(values) if cal is not None else values, np.float64)
    return out or None


def _derived_labels(cache: Path, meta: dict, model_labels) -> list:
    """The derived labels of ``cache`` the run is scored on (:func:`chexnet.derived.applicable`); the others its
    meta.json records are named on stderr."""
    usable, skipped = derived_labels.applicable(meta, cache_labels(meta), list(model_labels))
    for why in skipped:
        print(f"note: {cache}: derived label {why}: not scored", file=sys.stderr)
    return usable


def _check_overlap(run, run_info, cache, meta, index, split, allow_overlap) -> str:
    """Refuse (or, allowed, note) an external split that shares images or patients with what the run trained on."""
    found = training_overlap(run_info, cache, meta, index[index["split"] == split])
    if found is None:
        print(f"note: {run}'s training cache {run_info.get('cache')} is not here: overlap with it not checked",
              file=sys.stderr)
        return "; overlap with the training data not checked"
    images, patients = found
    if not images and not patients:
        return "; no image or patient in common with the run's train and val splits"
    what = "; ".join(part for part in (
        f"{len(images)} image(s), e.g. {', '.join(images[:3])}" if images else "",
        f"{len(patients)} patient(s), e.g. {', '.join(patients[:3])}" if patients else "") if part)
    if not allow_overlap:
        raise ValueError(f"{cache}: its {split} split shares {what} with the train and val splits run {run} was "
                         f"trained on: its AUROC would not be an external one. Evaluate on images the run has not "
                         f"seen, or pass --allow-overlap to evaluate anyway")
    print(f"warning: {cache}'s {split} split shares {what} with the run's training data (--allow-overlap)",
          file=sys.stderr)
    return f"; shares {what} with the run's training data (allowed)"


def evaluate_across(run: str | Path, caches: list, checkpoint: str = "best", split: str = "test", tta: str = "none",
                    batch_size: int = 64, n_resamples: int = 1000, threshold_method: str = "f1",
                    allow_overlap: bool = False, trust_changed: bool = False, raw: bool = False,
                    rules=DEFAULT_RULES, plots: bool = True):
    """Evaluate ``run`` on each of ``caches`` (as :func:`evaluate_run` with ``cache=``), then write the
    cross-dataset table, report and plot into RUN/eval/external/ (:mod:`chexnet.external`). Returns the long
    table on rank 0 (None elsewhere)."""
    from chexnet import external
    from chexnet.data.cache import load_cache

    run = Path(run)
    names = [Path(c).resolve().name for c in caches]
    if len(set(names)) != len(names):
        raise ValueError(f"--cache folders must have distinct names (they name the data sets): {names}")
    results, about = {}, {}
    for cache, name in zip(caches, names):
        table = evaluate_run(run, checkpoint, split, tta, batch_size, n_resamples, threshold_method, cache=cache,
                             allow_overlap=allow_overlap, trust_changed=trust_changed, raw=raw, rules=rules,
                             plots=plots)
        if table is None:  # not rank 0
            continue
        meta = load_cache(cache)[2]
        arguments = meta.get("arguments") or {}
        results[name] = table
        about[name] = {"cache": str(cache), "dataset": arguments.get("dataset", "nih"),
                       "options": arguments.get("options") or {},
                       "images": (meta.get("splits") or {}).get(split, {}).get("images"),
                       "mapping": ((meta.get("source") or {}).get("labels") or {}).get("labels"),
                       "derived": dict(table.attrs.get("derived") or {})}
    if not results:
        return None
    labels = list(load_run_model(run, checkpoint, trust_changed=trust_changed).cfg.labels)
    path = external.write_cross_dataset(run / "eval" / "external", results, about, labels)
    long = external.cross_dataset_table(results, labels)
    print(f"\n{run}: AUROC on {split} across {len(results)} data sets (n/a: not in that data set)")
    print(external.format_cross_dataset(long))
    print(f"wrote {path.parent}/ (cross_dataset.csv, cross_dataset.md, cross_dataset.png)", file=sys.stderr)
    return long


def _selection_note(cfg, path: Path, checkpoint: str) -> str:
    if checkpoint == "best":
        return f"best.pt: {SELECT_RULES[cfg.select].text}"
    if checkpoint == "last":
        return "last.pt: the newest state (not a selected model)"
    return f"{path} given on the command line"


def compare(runs: list[str], split: str = "test", out: str | None = None, n_resamples: int = 2000, seed: int = 0):
    """Compare evaluated runs on the same images (``chexnet evaluate`` first), over the labels they all have
    (:func:`chexnet.compare.compare_runs`: the others are named). Prints and returns the table."""
    from chexnet import compare, report

    csvs = []
    for r in runs:
        path = Path(r) / "eval" / split / "predictions.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{r}: no {split} predictions ({path}); run `chexnet evaluate {r} --split {split}` first")
        csvs.append((Path(r).name or str(r), path))
    out_dir = Path(out) if out else Path(runs[-1]) / "eval" / split / "compare"
    table, text = compare.compare_runs(csvs, out_dir=out_dir, n_resamples=n_resamples, seed=seed)
    print(report.format_table(table))
    print(text)
    print(f"wrote {out_dir}/", file=sys.stderr)
    return table


__all__ = ["evaluate_run", "evaluate_across", "compare"]
