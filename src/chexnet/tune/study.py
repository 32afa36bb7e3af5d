"""The study: ``chexnet tune``'s options, the checks before anything runs, opening (or joining) the Optuna study,
and the loop that starts trials while the study holds fewer than ``--trials``, one line per finished trial, and
stops when every trial so far failed with one same error."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chexnet import dist
from chexnet.config import TrainConfig
from chexnet.searchspace import load_space
from chexnet.tune._optuna import optuna_module, quiet_optuna
from chexnet.tune.outputs import format_params, format_table, note, print_best, write_outputs
from chexnet.tune.storage import display_url, open_storage, retry, storage_url
from chexnet.tune.trials import OBJECTIVES, TrialSetup, build_pruner, check_trials_can_start

SAME_FAILURES_STOP = 3  # a study none of whose trials worked stops after this many identical failures in a row


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


def pruner_spec(opts: TuneOptions, base: TrainConfig, searches_epochs: bool) -> dict:
    return {"kind": opts.pruner, "startup_trials": opts.pruner_startup_trials, "warmup_epochs": opts.pruner_warmup_epochs,
            "max_epochs": "auto" if searches_epochs else max(base.epochs, opts.pruner_warmup_epochs + 1)}


def tune(base: TrainConfig, opts: TuneOptions) -> dict:
    """Run (or resume, or join) the study described by ``opts`` over the base config ``base``."""
    with quiet_optuna():  # all of it: storage, sampler, study and the trials
        return _tune(base, opts)


def _tune(base: TrainConfig, opts: TuneOptions) -> dict:
    optuna = optuna_module()
    if dist.detect().distributed:
        raise ValueError("chexnet tune runs as one plain process per machine (it starts the trials' processes "
                         "itself: --nproc-per-trial); do not start it under torchrun, mpirun or srun")
    objective = opts.objective or base.select
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    if opts.trials < 1 or opts.nproc_per_trial < 1:
        raise ValueError("--trials and --nproc-per-trial must be at least 1")
    space = load_space(opts.space)
    check_trials_can_start(base, space, opts.cache)  # what would fail every trial fails here, before any study
    study_dir = Path(opts.out)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(study_dir, opts.storage)
    name = opts.study_name or study_dir.resolve().name
    pruner = pruner_spec(opts, base, any(p.name == "epochs" for p in space.params))
    storage = open_storage(url)
    # constant liar: running trials (on other machines too) count as bad, so parallel processes spread out
    sampler = optuna.samplers.TPESampler(seed=opts.seed, constant_liar=True)
    study = _open_study(storage, name, objective, sampler, build_pruner(pruner))
    if objective != base.select:
        note(f"note: trials select best.pt by {objective} (the objective), the base config by {base.select}")
    note(f"chexnet tune: study {name!r} in {display_url(url)}: {OBJECTIVES[objective].direction} {objective}; "
         f"space {space.name}: {space.describe()}; pruner {opts.pruner}; "
         f"{opts.nproc_per_trial} process(es) per trial")

    if opts.nproc_per_trial == 1:
        import chexnet.train  # noqa: F401  (imported now: the first trial's duration is its training alone)

    setup = TrialSetup(base=base, space=space, objective=objective, cache=opts.cache, out=study_dir, url=url,
                       study_name=name, pruner=pruner, storage=storage, nproc_per_trial=opts.nproc_per_trial)
    ran: list[int] = []
    failed_with = None
    _fail_dead_trials(study)  # also when no trial starts here (Optuna checks only when one does)
    already = _started(study)
    if already >= opts.trials:
        note(f"the study holds {already} trial(s), --trials {opts.trials}: nothing to run (raise --trials to add more)")
    else:
        failed_with = _optimize(study, setup, opts, already, ran)
        _fail_dead_trials(study)  # those that went silent during this process's last trial
    table = write_outputs(study, study_dir, plots=True)
    print(format_table(table))
    print_best(study, study_dir)
    if failed_with:
        raise RuntimeError(f"{failed_with}; the study stopped (fix the cause, then run the same command again to "
                           f"resume it)")
    return {"study": name, "storage": url, "ran": ran, "trials": len(table)}


def _open_study(storage, name: str, objective: str, sampler, pruner):
    direction = OBJECTIVES[objective].direction
    with quiet_optuna() as optuna:  # metric names are experimental
        study = retry(lambda: optuna.create_study(storage=storage, study_name=name, direction=direction,
                                                  sampler=sampler, pruner=pruner, load_if_exists=True),
                      f"study {name}")
        saved = study.user_attrs.get("objective")
        if saved not in (None, objective) or study.direction.name.lower() != direction:
            raise ValueError(f"study {name!r} already exists and {study.direction.name.lower()}s "
                             f"{saved or 'its objective'}; this command asks to {direction} {objective} "
                             f"(pass the same --objective, or another --study-name / --out)")
        if saved is None:
            study.set_user_attr("objective", objective)
            study.set_metric_names([objective])
    return study


def _optimize(study, objective_fn: Callable, opts: TuneOptions, already: int, ran: list[int]) -> str | None:
    """Start trials while the study holds fewer than ``opts.trials``. Returns None, or why it stopped early: every
    trial so far failed, the last SAME_FAILURES_STOP with one same error."""
    from tqdm import tqdm

    bar = tqdm(total=opts.trials, initial=already, desc="trials", unit="trial", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True)
    stopped: list[str] = []

    def after_trial(study, ft) -> None:
        ran.append(ft.number)
        value = f" {ft.value:.4f}" if ft.value is not None else ""
        error = f": {ft.user_attrs.get('error')}" if ft.state.name == "FAIL" else ""
        seconds = ft.duration.total_seconds() if ft.duration else 0.0
        bar.write(f"trial {ft.number} {ft.state.name}{value} in {seconds:.1f} s ({format_params(ft.params)}){error}",
                  file=sys.stderr)
        write_outputs(study, Path(opts.out), plots=False)  # the table and best.yaml stay current
        total = _started(study)
        bar.n = min(total, opts.trials)
        bar.refresh()
        failure = repeated_failure(study) if ft.state.name == "FAIL" else None
        if failure:
            stopped.append(failure)
        if total >= opts.trials or failure:
            study.stop()

    try:
        with quiet_optuna():
            study.optimize(objective_fn, n_trials=opts.trials - already, timeout=opts.timeout,
                           catch=(Exception,), callbacks=[after_trial], gc_after_trial=True)
    finally:
        bar.close()
    return stopped[0] if stopped else None


def repeated_failure(study, times: int = SAME_FAILURES_STOP) -> str | None:
    """When no trial of the study has worked (none complete, none pruned) and its last ``times`` finished trials
    failed with one same error: that, said as the reason to stop; else None."""
    from optuna.trial import TrialState

    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    if len(finished) < times or any(t.state != TrialState.FAIL for t in finished):
        return None
    errors = [t.user_attrs.get("error") for t in sorted(finished, key=lambda t: t.number)]
    last = errors[-times:]
    if not last[0] or any(e != last[0] for e in last):
        return None
    if all(e == last[0] for e in errors):
        return f"every trial so far failed with: {last[0]}"
    return f"every trial so far failed, the last {times} with: {last[0]}"


def _fail_dead_trials(study) -> None:
    """Mark FAILED the running trials whose heartbeat stopped more than GRACE_S ago (their process was killed,
    their machine lost): Optuna does it only when a trial starts, so a study that was already full when a process
    died kept that trial RUNNING for good."""
    with quiet_optuna() as optuna:  # experimental
        retry(lambda: optuna.storages.fail_stale_trials(study), f"study {study.study_name}")


def _started(study) -> int:
    """Trials that count toward --trials: all but the enqueued ones still waiting (they run first)."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
