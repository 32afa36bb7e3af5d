"""``chexnet tune``: an Optuna study over TrainConfig fields in which every trial is a normal training run.

::

    chexnet tune --cache cache/nih-256 --out studies/s1 --config keras-horovod --space report --trials 50
    chexnet tune --cache cache/nih-256 --out studies/s1 --storage postgresql://u:p@db/chexnet ...   # many machines
    chexnet tune --summary studies/s1

``STUDY/`` holds ``study.db`` (SQLite; or any Optuna RDB URL with ``--storage``), ``trials/NNNN/`` (one run
directory per trial, NNNN = Optuna's trial number: config.yaml, run.json, metrics.jsonl, checkpoints/, so
``chexnet evaluate`` and ``chexnet compare`` work on it), ``trials.csv``, ``best.yaml`` (the best trial's full
config: ``chexnet train --config STUDY/best.yaml`` runs it as is) and ``plots/*.png``.

How a trial runs: the space (chexnet.searchspace) draws its fields, they override the base config, and the
trial's ``select`` is set to the objective so that its ``best.pt`` is the epoch the study scored. It trains in
this process, or with ``--nproc-per-trial K`` in K worker processes through the launcher of ``chexnet train
--nproc`` (chexnet.launch.local), the workers running ``chexnet tune-trial``. Either way rank 0 of the training
reports the objective after each validation through ``chexnet.train.train``'s epoch callback (a worker
re-attaches to the trial by number through the study's storage) and stops the run on every rank when the
pruner says so: the trial is then PRUNED, its run directory kept. A trial whose training raises is FAILED with
the error in its ``error`` user attribute; the study goes on.

``--trials N`` is the study's total: a process starts trials while the study holds fewer than N (of any state,
running ones on other machines included; trials enqueued with Optuna's ``enqueue_trial`` wait, and run first),
so running the same command again resumes an interrupted study and a larger N extends it. Processes that start
a trial at the same moment can overshoot N by one each. Every trial's heartbeat is recorded in the storage: a
trial whose process died (killed, machine lost) is marked FAILED by the next process that starts a trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from chexnet import dist
from chexnet.config import TrainConfig, apply_overrides, config_from_dict, save_config
from chexnet.searchspace import load_space

OBJECTIVES = {"val_loss": ("minimize", "val_loss"), "val_auroc": ("maximize", "val_auroc_mean")}
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S, GRACE_S = 60, 180  # a running trial records a heartbeat every minute; 3 silent minutes = dead
SQLITE_TIMEOUT_S = 120  # how long an SQLite writer waits for another process's lock


@dataclass
class TuneOptions:
    cache: str
    out: str
    space: str = "report"
    trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    study_name: str | None = None
    nproc_per_trial: int = 1
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1
    seed: int | None = None
    objective: str | None = None  # default: the base config's select rule
    progress: bool = True


class TrialFailed(RuntimeError):
    pass


def _optuna():
    from chexnet.environment import require

    return require("optuna", "tune", "chexnet tune")


# ------------------------------------------------------------------------------------------------- storage


def storage_url(study_dir: str | os.PathLike, storage: str | None = None) -> str:
    return storage or f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"


def _retry(fn: Callable, what: str, attempts: int = 8, also: tuple[type[BaseException], ...] = ()):
    """Run ``fn``, retrying while the database is busy (several processes creating one study at once)."""
    import sqlalchemy.exc

    optuna = _optuna()
    for i in range(attempts):
        try:
            return fn()
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError, *also) as exc:
            if i == attempts - 1:
                raise RuntimeError(f"{what}: the storage stayed busy or unreachable: {exc}") from exc
            time.sleep(0.2 * 2 ** i)


def open_storage(url: str, heartbeat: bool = True):
    """An Optuna RDBStorage; SQLite writers wait for each other's locks instead of failing at once.

    Processes that open a new database at the same moment race to stamp its schema version: Optuna checks that
    the version table is empty and then inserts, so the loser gets an IntegrityError. Opening again finds the
    stamp and goes on, so that error is retried here (and only here: elsewhere it means a real conflict).
    """
    import sqlalchemy.exc

    optuna = _optuna()
    engine_kwargs = ({"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True})  # long trials: reconnect if the server dropped an idle link
    hb = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb),
                      f"storage {_display_url(url)}", also=(sqlalchemy.exc.IntegrityError,))


def _display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def build_pruner(spec: dict):
    optuna = _optuna()
    kind = spec["kind"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"],
                                           n_warmup_steps=spec["warmup_epochs"] + 1)  # steps are 1-based epochs
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["warmup_epochs"] + 1, max_resource=spec["max_epochs"],
                                              reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner must be one of {PRUNERS}, got {kind!r}")


def pruner_spec(opts: TuneOptions, base: TrainConfig, searches_epochs: bool) -> dict:
    return {"kind": opts.pruner, "startup_trials": opts.pruner_startup_trials, "warmup_epochs": opts.pruner_warmup_epochs,
            "max_epochs": "auto" if searches_epochs else max(base.epochs, opts.pruner_warmup_epochs + 1)}


def _study_id_and_trial_id(storage, study_name: str, number: int) -> tuple[int, int]:
    study_id = storage.get_study_id_from_name(study_name)
    return study_id, storage.get_trial_id_from_study_id_trial_number(study_id, number)


def frozen_trial(storage, study_name: str, number: int):
    return storage.get_trial(_study_id_and_trial_id(storage, study_name, number)[1])


# ------------------------------------------------------------------------------------ reporting from training


class TrialReporter:
    """The epoch callback of a trial's training (rank 0): report the objective, say whether to stop.

    ``trial`` is an Optuna Trial, or a function returning one (a worker process attaches on first use, so
    that only rank 0 ever opens the storage).
    """

    def __init__(self, trial, metric: str):
        self._trial, self.key = trial, OBJECTIVES[metric][1]

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
    """One of K processes training trial ``number`` (``chexnet tune-trial``, started by ``run_trial``)."""
    optuna = _optuna()
    cfg = config_from_dict(yaml.safe_load((Path(run) / "config.yaml").read_text()))
    is_main = dist.detect().is_main
    rdb = None

    def attach():
        nonlocal rdb
        rdb = rdb or open_storage(storage, heartbeat=False)  # the parent process keeps the heartbeat
        study = optuna.load_study(study_name=study_name, storage=rdb, pruner=build_pruner(pruner))
        return optuna.trial.Trial(study, _study_id_and_trial_id(rdb, study_name, number)[1])

    from chexnet.train import train

    try:
        train(cfg, cache, run, progress=False, epoch_callback=TrialReporter(attach, cfg.select))
    except Exception as exc:
        if is_main:  # the parent records this message (the launcher only knows the exit code)
            with contextlib.suppress(Exception):
                attach().set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise


# ------------------------------------------------------------------------------------------------- the study


def tune(base: TrainConfig, opts: TuneOptions) -> dict:
    """Run (or resume, or join) the study described by ``opts`` over the base config ``base``."""
    with _quiet_optuna():
        return _tune(base, opts)


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's per-trial INFO/WARNING lines (with tracebacks) give way to chexnet's own one line per trial."""
    optuna = _optuna()
    verbosity = optuna.logging.get_verbosity()
    if os.environ.get("CHEXNET_DEBUG", "") in ("", "0"):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _tune(base: TrainConfig, opts: TuneOptions) -> dict:
    optuna = _optuna()
    if dist.detect().distributed:
        raise ValueError("chexnet tune runs as one plain process per machine (it starts the trials' processes "
                         "itself: --nproc-per-trial); do not start it under torchrun, mpirun or srun")
    objective = opts.objective or base.select
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    if opts.trials < 1 or opts.nproc_per_trial < 1:
        raise ValueError("--trials and --nproc-per-trial must be at least 1")
    space = load_space(opts.space)
    study_dir = Path(opts.out)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(study_dir, opts.storage)
    name = opts.study_name or study_dir.resolve().name
    pruner = pruner_spec(opts, base, any(p.name == "epochs" for p in space.params))
    storage = open_storage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant liar: running trials (on other machines too) count as bad, so parallel processes spread out
        sampler = optuna.samplers.TPESampler(seed=opts.seed, constant_liar=True)
    study = _open_study(storage, name, objective, sampler, build_pruner(pruner))
    if objective != base.select:
        _note(f"note: trials select best.pt by {objective} (the objective), the base config by {base.select}")
    _note(f"chexnet tune: study {name!r} in {_display_url(url)}: {OBJECTIVES[objective][0]} {objective}; "
          f"space {space.name}: {space.describe()}; pruner {opts.pruner}; "
          f"{opts.nproc_per_trial} process(es) per trial")

    if opts.nproc_per_trial == 1:
        import chexnet.train  # noqa: F401  (imported now: the first trial's duration is its training alone)

    ran: list[int] = []
    objective_fn = _objective(study, storage, name, space, base, objective, opts, url, pruner, ran)
    already = _started(study)
    if already >= opts.trials:
        _note(f"the study holds {already} trial(s), --trials {opts.trials}: nothing to run (raise --trials to add more)")
    else:
        _optimize(study, objective_fn, opts, already)
    table = write_outputs(study, study_dir, plots=True)
    print(format_table(table))
    _print_best(study, study_dir)
    return {"study": name, "storage": url, "ran": ran, "trials": len(table)}


def _open_study(storage, name: str, objective: str, sampler, pruner):
    optuna = _optuna()
    direction = OBJECTIVES[objective][0]
    study = _retry(lambda: optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                               pruner=pruner, load_if_exists=True), f"study {name}")
    saved = study.user_attrs.get("objective")
    if saved not in (None, objective) or study.direction.name.lower() != direction:
        raise ValueError(f"study {name!r} already exists and {study.direction.name.lower()}s "
                         f"{saved or 'its objective'}; this command asks to {direction} {objective} "
                         f"(pass the same --objective, or another --study-name / --out)")
    if saved is None:
        study.set_user_attr("objective", objective)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([objective])
    return study


def _objective(study, storage, name, space, base, objective, opts, url, pruner, ran) -> Callable:
    optuna = _optuna()
    trials_dir = Path(opts.out) / "trials"

    def run(trial) -> float:
        ran.append(trial.number)
        run_dir = trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir.resolve()))
        trial.set_user_attr("host", f"{socket.gethostname()}:{os.getpid()}")
        try:
            params = space.suggest(trial)
            cfg = dataclasses.replace(apply_overrides(base, params, f"trial {trial.number}"), select=objective)
            trial.set_user_attr("config", cfg.to_dict())
            _run_training(trial, cfg, opts, url, name, pruner, run_dir)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            message = (frozen_trial(storage, name, trial.number).user_attrs.get("error")
                       or ("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"))
            trial.set_user_attr("error", message)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise TrialFailed(message) from exc
        ft = frozen_trial(storage, name, trial.number)
        if "pruned_after_epoch" in ft.user_attrs:
            raise optuna.TrialPruned(f"pruned after epoch {ft.user_attrs['pruned_after_epoch']}")
        values = [v for v in ft.intermediate_values.values() if math.isfinite(v)]
        if not values:
            message = (f"no finite {objective} was measured (empty validation split, eval_every > epochs, "
                       f"or an AUROC undefined on this validation split)")
            trial.set_user_attr("error", message)
            raise TrialFailed(message)
        return min(values) if OBJECTIVES[objective][0] == "minimize" else max(values)

    return run


def _run_training(trial, cfg: TrainConfig, opts: TuneOptions, url: str, name: str, pruner: dict, run_dir: Path) -> None:
    """Train one trial in this process, or in ``--nproc-per-trial`` worker processes."""
    if opts.nproc_per_trial > 1:
        from chexnet.launch.local import spawn

        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")  # the workers read it (train writes the same file again)
        spawn(opts.nproc_per_trial, ["tune-trial", "--storage", url, "--study-name", name, "--trial",
                                     str(trial.number), "--pruner", json.dumps(pruner), "--cache", str(opts.cache),
                                     "--out", str(run_dir)])
    else:
        from chexnet.train import train

        train(cfg, opts.cache, run_dir, progress=False, epoch_callback=TrialReporter(trial, cfg.select))


def _optimize(study, objective_fn: Callable, opts: TuneOptions, already: int) -> None:
    import optuna
    from tqdm import tqdm

    bar = tqdm(total=opts.trials, initial=already, desc="trials", unit="trial", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True)

    def after_trial(study, ft) -> None:
        value = f" {ft.value:.4f}" if ft.value is not None else ""
        error = f": {ft.user_attrs.get('error')}" if ft.state.name == "FAIL" else ""
        seconds = ft.duration.total_seconds() if ft.duration else 0.0
        bar.write(f"trial {ft.number} {ft.state.name}{value} in {seconds:.1f} s ({_params(ft.params)}){error}",
                  file=sys.stderr)
        write_outputs(study, Path(opts.out), plots=False)  # the table and best.yaml stay current
        total = _started(study)
        bar.n = min(total, opts.trials)
        bar.refresh()
        if total >= opts.trials:
            study.stop()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective_fn, n_trials=opts.trials - already, timeout=opts.timeout,
                           catch=(Exception,), callbacks=[after_trial], gc_after_trial=True)
    finally:
        bar.close()


def _started(study) -> int:
    """Trials that count toward --trials: all but the enqueued ones still waiting (they run first)."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- outputs


def summarize(study_dir: str | os.PathLike, storage: str | None = None, study_name: str | None = None) -> dict:
    """``chexnet tune --summary``: the table, best.yaml and plots again, from the storage alone."""
    optuna = _optuna()
    study_dir = Path(study_dir)
    if storage is None and not (study_dir / "study.db").is_file():
        raise FileNotFoundError(f"{study_dir}: no study.db here (pass --storage URL for a study in another database)")
    url = storage_url(study_dir, storage)
    name = study_name or study_dir.resolve().name
    with _quiet_optuna():
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
        except KeyError:
            raise ValueError(f"no study {name!r} in {_display_url(url)} (pass --study-name)") from None
        table = write_outputs(study, study_dir, plots=True)
    print(format_table(table))
    _print_best(study, study_dir)
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


def write_outputs(study, study_dir: Path, plots: bool = True):
    """STUDY/trials.csv, STUDY/best.yaml and (``plots``) STUDY/plots/*.png from the study's storage."""
    from chexnet.fileio import atomic_write

    table = trials_table(study)
    atomic_write(study_dir / "trials.csv", table.to_csv(index=False))
    best = _best_trial(study)
    if best is not None and "config" in best.user_attrs:  # (trials added through Optuna's API have no config)
        header = (f"# best trial of study {study.study_name!r}: trial {best.number}, "
                  f"{_metric(study)} {best.value:.6g}\n# run: {best.user_attrs.get('run', '?')}\n"
                  f"# chexnet train --config {study_dir / 'best.yaml'} --cache CACHE --out RUN\n")
        config = apply_overrides(TrainConfig(), best.user_attrs["config"], "best trial").to_dict()  # validated
        atomic_write(study_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    if plots:
        for name, problem in write_plots(study, study_dir / "plots").items():
            if problem:
                _note(f"plot {name}: skipped ({problem})")
    return table


def _metric(study) -> str:
    return study.user_attrs.get("objective", "value")


def _best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _print_best(study, study_dir: Path) -> None:
    best = _best_trial(study)
    if best is None:
        print("no complete trial yet: no best.yaml")
        return
    config = (f"config: {study_dir / 'best.yaml'}; run: {best.user_attrs.get('run', '?')}" if "config" in best.user_attrs
              else "not run by chexnet tune (added through Optuna's API): no config, no best.yaml")
    print(f"best: trial {best.number}, {_metric(study)} {best.value:.4f} ({_params(best.params)}); {config}")


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API warnings
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
