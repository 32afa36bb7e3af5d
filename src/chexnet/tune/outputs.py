"""What a study leaves in its folder, from its storage alone: the trials table (printed and STUDY/trials.csv),
STUDY/best.yaml (the best trial's full config), STUDY/plots/*.png, and ``chexnet tune --summary``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from chexnet.config import TrainConfig, apply_overrides
from chexnet.tune._optuna import quiet_optuna
from chexnet.tune.storage import display_url, open_storage, storage_url


def summarize(study_dir: str | os.PathLike, storage: str | None = None, study_name: str | None = None) -> dict:
    """``chexnet tune --summary``: the table, best.yaml and plots again, from the storage alone."""
    study_dir = Path(study_dir)
    if storage is None and not (study_dir / "study.db").is_file():
        raise FileNotFoundError(f"{study_dir}: no study.db here (pass --storage URL for a study in another database)")
    url = storage_url(study_dir, storage)
    name = study_name or study_dir.resolve().name
    with quiet_optuna() as optuna:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
        except KeyError:
            raise ValueError(f"no study {name!r} in {display_url(url)} (pass --study-name)") from None
        table = write_outputs(study, study_dir, plots=True)
    print(format_table(table))
    print_best(study, study_dir)
    return {"study": name, "trials": len(table)}


def trials_table(study):
    """One row per trial: number, state, value, duration, epochs reported, each parameter, run folder, error."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
                     "epochs": len(t.intermediate_values),
                     **{f"param_{k}": v for k, v in t.params.items()},
                     "run": t.user_attrs.get("run", ""), "host": t.user_attrs.get("host", ""),
                     "error": t.user_attrs.get("error", "")})
    columns = ["number", "state", "value", "duration_s", "epochs"]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    table = pd.DataFrame(rows, columns=columns + params + ["run", "host", "error"])
    table["value"] = pd.to_numeric(table["value"])
    table["duration_s"] = pd.to_numeric(table["duration_s"])
    return table


def format_table(table) -> str:
    if table.empty:
        return "no trials yet"
    shown = table.drop(columns=["run", "host", "error"]).rename(columns=lambda c: c.removeprefix("param_"))
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    errors = [f"trial {r.number}: {r.error}" for r in table.itertuples() if r.error]
    return text + ("\nerrors:\n  " + "\n  ".join(errors) if errors else "")


def format_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_outputs(study, study_dir: Path, plots: bool = True):
    """STUDY/trials.csv, STUDY/best.yaml and (``plots``) STUDY/plots/*.png from the study's storage."""
    from chexnet.fileio import atomic_write

    table = trials_table(study)
    atomic_write(study_dir / "trials.csv", table.to_csv(index=False))
    best = best_trial(study)
    if best is not None and "config" in best.user_attrs:  # (trials added through Optuna's API have no config)
        header = (f"# best trial of study {study.study_name!r}: trial {best.number}, "
                  f"{metric_name(study)} {best.value:.6g}\n# run: {best.user_attrs.get('run', '?')}\n"
                  f"# chexnet train --config {study_dir / 'best.yaml'} --cache CACHE --out RUN\n")
        config = apply_overrides(TrainConfig(), best.user_attrs["config"], "best trial").to_dict()  # validated
        atomic_write(study_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    if plots:
        for name, problem in write_plots(study, study_dir / "plots").items():
            if problem:
                note(f"plot {name}: skipped ({problem})")
    return table


def metric_name(study) -> str:
    return study.user_attrs.get("objective", "value")


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def print_best(study, study_dir: Path) -> None:
    best = best_trial(study)
    if best is None:
        print("no complete trial yet: no best.yaml")
        return
    config = (f"config: {study_dir / 'best.yaml'}; run: {best.user_attrs.get('run', '?')}" if "config" in best.user_attrs
              else "not run by chexnet tune (added through Optuna's API): no config, no best.yaml")
    print(f"best: trial {best.number}, {metric_name(study)} {best.value:.4f} ({format_params(best.params)}); {config}")


def write_plots(study, out: Path) -> dict[str, str | None]:
    """Optuna's matplotlib views as PNGs (Agg backend). Returns {plot: None, or why it was skipped}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    from chexnet.fileio import atomic_write

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    views: dict[str, tuple[Callable, str | None]] = {
        "optimization_history": (ovm.plot_optimization_history, None if complete else "no complete trial"),
        "intermediate_values": (ovm.plot_intermediate_values, None if complete or study.trials else "no trial"),
        "parallel_coordinate": (ovm.plot_parallel_coordinate, None if complete else "no complete trial"),
        "param_importances": (ovm.plot_param_importances, None if complete >= 2 else "fewer than 2 complete trials"),
    }
    result: dict[str, str | None] = {}
    for name, (plot, skip) in views.items():
        result[name] = skip
        if skip:
            continue
        try:
            with quiet_optuna(all_warnings=True):  # experimental-API warnings
                axes = plot(study)
            fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            atomic_write(out / f"{name}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=100,
                                                                            bbox_inches="tight"))
            plt.close(fig)
        except Exception as exc:  # e.g. importances of a parameter that never varied
            result[name] = f"{type(exc).__name__}: {exc}"
            plt.close("all")
    return result
