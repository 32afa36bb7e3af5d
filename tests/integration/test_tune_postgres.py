"""A study shared through a real PostgreSQL server survives a lost machine (the README's "many machines on one
PostgreSQL study"): two ``chexnet tune`` processes join one study, one is killed with SIGKILL inside a trial, the
other finishes the study, the dead trial is failed by the heartbeat, and the storage URL's password is written
nowhere.

The server is Debian's ``postgresql`` (installed by .ci/run), started here on 127.0.0.1 with a free port and a
password-authenticated user, in a temporary data folder removed at the end. As root the server runs as the
``postgres`` user the package creates (PostgreSQL refuses to run as root). Skipped, saying why, without the server's
binaries, the ``postgres`` user (as root), optuna or the psycopg driver (``chexnet[postgres]``).

Heartbeats: chexnet records one every HEARTBEAT_S (60 s) and fails a trial silent for GRACE_S (180 s); the
processes here run ``chexnet tune`` through a two-line wrapper that sets them to 1 s and 3 s first. So that the
survivor's next trial surely finds the dead one silent past the grace period, however fast its trials run, the
survivor is paused (SIGSTOP) from just before the kill until the grace period has passed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, free_port, subprocess_env

pytestmark = pytest.mark.timeout(300)

HEARTBEAT_S, GRACE_S = 1, 3
# ``chexnet tune ARGS`` with short heartbeats (chexnet.tune.storage reads its constants when it opens the storage)
TUNE = ("import sys; import chexnet.tune.storage as s; s.HEARTBEAT_S, s.GRACE_S = {hb}, {grace}; "
        "from chexnet.cli import main; sys.exit(main(sys.argv[1:]))").format(hb=HEARTBEAT_S, grace=GRACE_S)
SPACE = "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
USER, DB = "chexnet", "study"


def _server_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: Debian's newest /usr/lib/postgresql/N/bin, or the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _why_not() -> str | None:
    if importlib.util.find_spec("optuna") is None:
        return "optuna is not installed (pip install 'chexnet[tune]')"
    if importlib.util.find_spec("psycopg") is None:
        return "no PostgreSQL driver for SQLAlchemy (pip install 'chexnet[postgres]': psycopg)"
    if _server_binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl: Debian's postgresql package, installed by .ci/run)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as (PostgreSQL refuses root)"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start the server as 'postgres'"
    return None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with a password user and an empty database: yields its URL and password.
    Stopped, its data folder removed, whatever happens."""
    why = _why_not()
    if why:
        pytest.skip(why)
    bindir = _server_binaries()
    root = Path(tempfile.mkdtemp(prefix="chexnet-pg-"))  # not under pytest's tmp_path: 'postgres' must reach it
    data, sock, pwfile = root / "data", root / "sock", root / "pw"
    password = "pw-" + secrets.token_hex(12)  # distinctive: searched for in every output
    port = free_port()
    as_server: list[str] = []
    if os.geteuid() == 0:
        import pwd

        as_server = ["runuser", "-u", "postgres", "--"]
        entry = pwd.getpwnam("postgres")
    sock.mkdir()
    pwfile.write_text(password + "\n")
    if as_server:
        for p in (root, sock, pwfile):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    log = root / "server.log"

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*as_server, *cmd], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"})

    started = False
    try:
        done = run(str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                   "-E", "UTF8", "--no-sync")
        assert done.returncode == 0, done.stdout + done.stderr
        pwfile.unlink()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off"
        done = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        started = done.returncode == 0
        assert started, done.stdout + done.stderr + (log.read_text() if log.exists() else "")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        yield f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port}/{DB}", password
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def tune_cmd(cache, out: Path, space: Path, url: str, trials: int, name: str) -> list[str]:
    sets = [a for k, v in TINY.items() if k != "epochs" for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-c", TUNE, "tune", "--cache", str(cache), "--out", str(out), "--space", str(space),
            "--trials", str(trials), "--storage", url, "--study-name", name, "--epochs", "1", "--no-progress", *sets]


def load(storage, name: str):
    """The study ``name`` in ``storage`` (a URL, or an open storage: polling reuses one engine)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=storage)


def wait_for_trial_of(proc: subprocess.Popen, url: str, name: str, timeout: float = 120):
    """The trial ``proc`` is training (its config drawn, so inside the objective), polled from the storage."""
    from chexnet.tune import open_storage

    storage = open_storage(url, heartbeat=False)  # retries the schema race with the processes creating it
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the process to kill ended before it was inside a trial"
        try:
            trials = load(storage, name).get_trials(deepcopy=False)
        except KeyError:  # the study does not exist yet
            trials = []
        for t in trials:
            if (t.state.name == "RUNNING" and t.user_attrs.get("host", "").endswith(f":{proc.pid}")
                    and "config" in t.user_attrs):
                return t
        time.sleep(0.2)
    raise AssertionError(f"process {proc.pid} started no trial in {timeout} s")


@pytest.mark.slow
def test_a_postgres_study_survives_a_process_killed_inside_a_trial(postgres, tiny_cache, tmp_path):
    url, password = postgres
    name, trials = "shared", 4
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # one --out per "machine", one study
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    t0 = time.monotonic()
    procs = []
    for out, log in zip(outs, logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(tune_cmd(tiny_cache, out, space, url, trials, name), env=subprocess_env(),
                                          stdout=f, stderr=subprocess.STDOUT))
    victim, survivor = procs
    try:
        killed = wait_for_trial_of(victim, url, name)
        survivor.send_signal(signal.SIGSTOP)  # it starts no trial until the dead one is surely stale
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        before_kill = load(url, name).get_trials(deepcopy=False)
        time.sleep(GRACE_S + 2 * HEARTBEAT_S)
        survivor.send_signal(signal.SIGCONT)
        survivor.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    outputs = [log.read_text() for log in logs]
    assert survivor.returncode == 0, outputs[1][-3000:]
    elapsed = time.monotonic() - t0

    study = load(url, name).trials
    by_number = {t.number: t for t in study}
    assert [t.number for t in study] == list(range(len(study))) and trials <= len(study) <= trials + 1, \
        [(t.number, t.state.name) for t in study]
    assert by_number[killed.number].state.name == "FAIL", (by_number[killed.number].state, outputs[1][-2000:])
    others = [t for t in study if t.number != killed.number]
    assert {t.state.name for t in others} == {"COMPLETE"}, [(t.number, t.state.name) for t in study]
    survivor_host = f":{survivor.pid}"
    assert len(before_kill) < trials, "the study was full before the kill: no trial started after it"
    assert len(study) > len(before_kill) and all(t.user_attrs["host"].endswith(survivor_host)
                                                 for t in study[len(before_kill):])  # the survivor finished it
    # the dead trial is failed in the survivor's outputs, which list every trial of the study
    table = (outs[1] / "trials.csv").read_text()
    assert f"\n{killed.number},FAIL" in table, table
    assert f"{USER}:***@127.0.0.1" in outputs[1]  # the URL as messages show it

    # the password: in neither process's output, nor in any file either one wrote
    for which, out in zip("ab", outputs):
        assert password not in out, f"process {which} printed the storage password"
    leaks = [str(p) for d in outs for p in d.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaks, f"the storage password is written in {leaks}"

    # the README's way to keep the password off the command line: libpq reads it from PGPASSWORD
    from chexnet.tune import open_storage

    os.environ["PGPASSWORD"] = password
    try:
        assert open_storage(url.replace(f":{password}@", "@"), heartbeat=False).get_study_id_from_name(name) >= 0
    finally:
        del os.environ["PGPASSWORD"]
    print(f"two-process postgres study: {elapsed:.1f} s")


def test_storage_urls_lose_their_password_in_what_a_trial_records():
    """A trial's run.json records argv: chexnet tune hides --storage's password there, in both spellings."""
    from chexnet.tune.storage import argv_without_passwords

    saved = sys.argv
    sys.argv = ["chexnet", "tune", "--storage", "postgresql+psycopg://u:s3cret@db:5432/x", "--storage=mysql://v:pw@h/y",
                "--out", "a@b:c"]
    try:
        with argv_without_passwords():
            assert sys.argv == ["chexnet", "tune", "--storage", "postgresql+psycopg://u:***@db:5432/x",
                                "--storage=mysql://v:***@h/y", "--out", "a@b:c"]
        assert sys.argv[3].endswith("u:s3cret@db:5432/x")  # restored
    finally:
        sys.argv = saved


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna is not installed")
def test_a_storage_without_its_driver_is_an_error_naming_the_extra():
    pytest.importorskip("sqlalchemy")
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed: this test needs a driver that is missing")
    from chexnet.tune import open_storage

    with pytest.raises(RuntimeError) as err:
        open_storage("postgresql+pg8000://u:s3cret@127.0.0.1:1/x", heartbeat=False)
    message = str(err.value)
    assert "no database driver" in message and "chexnet[postgres]" in message and "pg8000" in message
    assert "s3cret" not in message and "u:***@127.0.0.1" in message


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna is not installed")
def test_running_a_full_study_again_fails_the_trial_of_a_lost_process(tiny_cache, tmp_path, monkeypatch, capsys):
    """A trial whose process died after the study was full is failed by the next ``chexnet tune`` on the study,
    although that one starts no trial (its heartbeat check is at every start, not only a trial's)."""
    import optuna

    import chexnet.tune.storage as S
    from chexnet import cli

    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    monkeypatch.setattr(S, "GRACE_S", 1)
    study = tmp_path / "study"
    study.mkdir()
    rdb = S.open_storage(S.storage_url(study))
    optuna.create_study(storage=rdb, study_name=study.name, direction="minimize")
    lost = rdb.create_new_trial(rdb.get_study_id_from_name(study.name))  # RUNNING; its process then vanished
    rdb.record_heartbeat(lost)
    time.sleep(2.5)
    (tmp_path / "space.yaml").write_text(SPACE)
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(["tune", "--cache", str(tiny_cache), "--out", str(study), "--space", str(tmp_path / "space.yaml"),
                     "--trials", "1", "--no-progress", *sets]) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert [t.state.name for t in optuna.load_study(study_name=study.name, storage=rdb).trials] == ["FAIL"]
    assert "\n0,FAIL" in (study / "trials.csv").read_text()
