"""Optuna, the optional dependency of ``chexnet tune``: its import, and the one place its log lines and warnings
are quieted."""

from __future__ import annotations

import contextlib
import threading
import warnings

from chexnet.environment import debug_enabled

_verbosity_lock = threading.Lock()
_verbosity_users = 0  # quiet_optuna blocks open now (nested, or in threads: storage openers)
_verbosity_saved: int | None = None


def optuna_module():
    """``optuna``, or a MissingExtra naming ``pip install 'chexnet[tune]'``."""
    from chexnet.environment import require

    return require("optuna", "tune", "chexnet tune")


@contextlib.contextmanager
def quiet_optuna(all_warnings: bool = False):
    """Optuna's per-trial INFO/WARNING lines (with tracebacks) give way to chexnet's own one line per trial, and its
    ExperimentalWarnings (heartbeats, constant liar, metric names) are not shown; yields the ``optuna`` module.
    ``all_warnings``: every warning is ignored (plotting: Optuna's experimental views, matplotlib).

    CHEXNET_DEBUG keeps Optuna's log lines; the warnings stay quiet either way. Blocks may nest and run in
    several threads at once: Optuna's verbosity is restored when the last one ends.
    """
    global _verbosity_users, _verbosity_saved
    optuna = optuna_module()
    with _verbosity_lock:
        if _verbosity_users == 0:
            _verbosity_saved = optuna.logging.get_verbosity()
            if not debug_enabled():
                optuna.logging.set_verbosity(optuna.logging.ERROR)
        _verbosity_users += 1
    try:
        with warnings.catch_warnings():
            if all_warnings:
                warnings.simplefilter("ignore")
            else:
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield optuna
    finally:
        with _verbosity_lock:
            _verbosity_users -= 1
            if _verbosity_users == 0:
                optuna.logging.set_verbosity(_verbosity_saved)
