"""Where a study lives: its storage URL (SQLite in STUDY/study.db by default, or any Optuna RDB URL), the RDB
storage with SQLite lock waits and heartbeats, retries while the database is busy, a trial found by number,
and the URL as messages and records show it (without its password)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

from chexnet.tune._optuna import optuna_module, quiet_optuna

HEARTBEAT_S, GRACE_S = 60, 180  # a running trial records a heartbeat every minute; 3 silent minutes = dead
SQLITE_TIMEOUT_S = 120  # how long an SQLite writer waits for another process's lock


def storage_url(study_dir: str | os.PathLike, storage: str | None = None) -> str:
    return storage or f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"


def retry(fn: Callable, what: str, attempts: int = 8, also: tuple[type[BaseException], ...] = ()):
    """Run ``fn``, retrying while the database is busy (several processes creating one study at once)."""
    import sqlalchemy.exc

    optuna = optuna_module()
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

    engine_kwargs = ({"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True})  # long trials: reconnect if the server dropped an idle link
    hb = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    with quiet_optuna() as optuna:  # heartbeats are experimental
        try:
            return retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb),
                         f"storage {display_url(url)}", also=(sqlalchemy.exc.IntegrityError,))
        except ImportError as exc:  # SQLAlchemy found no driver for the URL's dialect
            raise RuntimeError(f"storage {display_url(url)}: no database driver for it ({exc.__cause__ or exc}); "
                               f"for PostgreSQL: pip install 'chexnet[postgres]' (psycopg) and a "
                               f"postgresql+psycopg:// URL") from exc


def display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


@contextlib.contextmanager
def argv_without_passwords():
    """``sys.argv`` with every URL's password hidden (:func:`display_url`), for the block: a trial's training
    records ``sys.argv`` in its run.json, and ``--storage URL``'s password must not be written there."""
    saved = sys.argv
    sys.argv = [display_url(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


def study_and_trial_id(storage, study_name: str, number: int) -> tuple[int, int]:
    study_id = storage.get_study_id_from_name(study_name)
    return study_id, storage.get_trial_id_from_study_id_trial_number(study_id, number)


def frozen_trial(storage, study_name: str, number: int):
    return storage.get_trial(study_and_trial_id(storage, study_name, number)[1])
