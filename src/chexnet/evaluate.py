"""``chexnet evaluate``: run a trained model over a split and write predictions, metrics, tables and plots.

Runs distributed too (``--nproc N`` or any launcher): every rank predicts a strided shard, the shards are
gathered, and rank 0 writes ``RUN/eval/<split>/``. The rows are identical whatever the number of processes.
When the split is ``test``, validation predictions are made as well: the operating thresholds
(sensitivity / specificity / F1) are chosen on them, never on the test set.
"""

from __future__ import annotations

import sys
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

TTA_MODES = {"none": "eval", "hflip": "hflip", "tencrop": "tencrop"}


def load_run_model(run: str | Path, checkpoint: str = "best"):
    """(model on CPU in eval mode, TrainConfig, checkpoint path) of a run directory."""
    run = Path(run)
    path = resolve_checkpoint(run, checkpoint)
    state = load_checkpoint(path)
    cfg_dict = state.get("config") or yaml.safe_load((run / "config.yaml").read_text())
    cfg = config_from_dict(cfg_dict)
    if tuple(cfg.labels) != PATHOLOGIES:
        raise ValueError(f"{run}: trained on {len(cfg.labels)} labels ({', '.join(cfg.labels)}); evaluation and its "
                         f"reports cover the 14 NIH pathologies only")
    model = create_model(cfg.arch, "none", len(cfg.labels), cfg.head_bias_init)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, path


def predict_split(model, cfg, cache: Path, index, meta, split: str, tta: str, info, ctx, batch_size: int):
    dataset = open_split(cache, index, meta, split, cfg.image_size, TTA_MODES[tta], labels=cfg.labels)
    if len(dataset) == 0:
        raise ValueError(f"{cache}: the {split} split is empty")
    probs = predict_distributed(model, dataset, info, ctx, batch_size=batch_size, workers=cfg.workers,
                                show_progress=info.is_main)
    rows = index.iloc[dataset.rows]
    return rows, probs, dataset.labels


def evaluate_run(run: str | Path, checkpoint: str = "best", split: str = "test", tta: str = "none",
                 batch_size: int = 64, n_resamples: int = 1000, threshold_method: str = "f1"):
    """Evaluate ``run`` on ``split``; rank 0 writes RUN/eval/<split>/ and returns the table (others None)."""
    from chexnet import report

    info, device = dist.init()
    try:
        run = Path(run)
        info_json = read_run_info(run)
        cache = Path(info_json["cache"])
        model, cfg, path = load_run_model(run, checkpoint)
        model.to(device)
        _, index, meta = load_cache(cache)
        ctx = StepContext(device, cfg.precision, cfg.channels_last)
        frames = {}
        for name in dict.fromkeys([split, "val"] if split == "test" else [split]):
            rows, probs, labels = predict_split(model, cfg, cache, index, meta, name, tta, info, ctx, batch_size)
            if info.is_main:  # every rank predicted its shard; only rank 0 writes
                frames[name] = report.predictions_frame(rows["image"].to_numpy(), rows["patient_id"].to_numpy(),
                                                        probs, labels)
        if not info.is_main:
            return None
        for name, frame in frames.items():
            (run / "eval" / name).mkdir(parents=True, exist_ok=True)
            report.write_predictions(frame, run / "eval" / name / "predictions.csv")
        context = {"run": str(run), "checkpoint": str(path), "split": split, "tta": tta, "arch": cfg.arch,
                   "processes": info.world_size, "cache": str(cache)}
        table = report.write_evaluation(run / "eval" / split, frames[split], frames.get("val"),
                                        threshold_method=threshold_method, n_resamples=n_resamples, context=context)
        print(f"{run} [{split}, checkpoint {path.name}, tta {tta}]")
        print(report.format_table(table))
        print(f"wrote {run / 'eval' / split}/ (predictions.csv, metrics.json, auroc.csv, report.md, roc.png, pr.png, "
              f"auroc_vs_published.png)", file=sys.stderr)
        return table
    finally:
        dist.teardown()


def compare(runs: list[str], split: str = "test", out: str | None = None):
    """Compare evaluated runs on the same images (``chexnet evaluate`` first). Prints and returns the table."""
    from chexnet import report

    csvs = []
    for r in runs:
        path = Path(r) / "eval" / split / "predictions.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{r}: no {split} predictions ({path}); run `chexnet evaluate {r} --split {split}` first")
        csvs.append((Path(r).name or str(r), path))
    out_dir = Path(out) if out else Path(runs[-1]) / "eval" / split / "compare"
    table, text = report.compare_runs(csvs, out_dir=out_dir)
    print(report.format_table(table))
    print(text)
    print(f"wrote {out_dir}/", file=sys.stderr)
    return table


__all__ = ["evaluate_run", "compare", "load_run_model"]
