"""``chexnet tune``: an Optuna study over TrainConfig fields in which every trial is a normal training run.

::

    chexnet tune --cache cache/nih-256 --out studies/s1 --config keras-horovod --space report --trials 50
    chexnet tune --cache cache/nih-256 --out studies/s1 --storage postgresql+psycopg://u:p@db/chexnet  # many machines
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
the error in its ``error`` user attribute; the study goes on, unless no trial has worked and the last three
failed with one same error: then it starts no new trial and ends with an error naming it. What would fail
every trial is checked once, before the study is opened: the cache (train and val splits, the config's
labels, the input size) and every model the space can draw, built once with its weights.

``--trials N`` is the study's total: a process starts trials while the study holds fewer than N (of any state,
running ones on other machines included; trials enqueued with Optuna's ``enqueue_trial`` wait, and run first),
so running the same command again resumes an interrupted study and a larger N extends it. Processes that start
a trial at the same moment can overshoot N by one each. Every trial's heartbeat is recorded in the storage: a
trial whose process died (killed, machine lost) is marked FAILED by the next process that starts a trial, or
by the next ``chexnet tune`` on the study even if it has nothing to run.

Modules: ``study`` (TuneOptions, the checks, the study and its loop), ``trials`` (TrialSetup, the objective;
training in this process or in K; the pruning callback and the pruner), ``storage`` (URLs, the RDB storage,
retries, heartbeats), ``outputs`` (trials table, best.yaml, plots, ``--summary``), ``_optuna`` (the optional
import, and ``quiet_optuna``: the one place Optuna's log lines and warnings are quieted).
"""

from __future__ import annotations

from chexnet.tune.outputs import format_table, summarize, trials_table, write_outputs, write_plots
from chexnet.tune.storage import (
    GRACE_S,
    HEARTBEAT_S,
    SQLITE_TIMEOUT_S,
    display_url,
    frozen_trial,
    open_storage,
    storage_url,
)
from chexnet.tune.study import SAME_FAILURES_STOP, TuneOptions, pruner_spec, repeated_failure, tune
from chexnet.tune.trials import (
    OBJECTIVES,
    PRUNERS,
    TrialFailed,
    TrialReporter,
    TrialSetup,
    build_pruner,
    check_trials_can_start,
    trial_worker,
)

__all__ = [
    "GRACE_S", "HEARTBEAT_S", "OBJECTIVES", "PRUNERS", "SAME_FAILURES_STOP", "SQLITE_TIMEOUT_S", "TrialFailed",
    "TrialReporter", "TrialSetup", "TuneOptions", "build_pruner", "check_trials_can_start", "display_url",
    "format_table", "frozen_trial", "open_storage", "pruner_spec", "repeated_failure", "storage_url", "summarize",
    "trial_worker", "trials_table", "tune", "write_outputs", "write_plots",
]
