"""A full disk is a clear error that names the file and the space, and nothing finished is lost: atomic writes
keep the old file, the run log names its file, and a prepare that runs out of space mid-way keeps its finished
rows and, re-run, gives the cache an uninterrupted run gives."""

from __future__ import annotations

import errno

import numpy as np
import pytest

import chexnet.data.prepare as P
from chexnet.data.cache import load_cache
from chexnet.fileio import DiskFullError, atomic_write, check_free_space, human_size
from chexnet.runlog import RunLogger
from tests.conftest import make_nih_folder


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_an_atomic_write_without_space_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    atomic_write(path, b"old")
    monkeypatch.setattr("chexnet.fileio.os.fsync", _no_space)
    with pytest.raises(DiskFullError, match=r"run.json: no space left on the device \(.* free in .*; it needs 3 bytes"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_run_log_names_its_file(tmp_path, monkeypatch):
    log = RunLogger(tmp_path)
    log.log({"kind": "train", "step": 1})
    monkeypatch.setattr("pathlib.Path.open", _no_space)
    with pytest.raises(DiskFullError, match="metrics.jsonl: no space left"):
        log.log({"kind": "train", "step": 2})


def test_work_that_cannot_fit_is_refused_before_it_starts(tmp_path):
    check_free_space(tmp_path, 1, "a byte")
    with pytest.raises(DiskFullError, match=r"caching needs 1000000.0 GB but .* free"):
        check_free_space(tmp_path / "not" / "yet", 10**15, "caching")
    assert human_size(1234) == "1.2 KB" and human_size(999) == "999 bytes"


def test_prepare_out_of_space_mid_way_keeps_its_rows_and_resumes_to_the_same_cache(tmp_path, monkeypatch):
    data = make_nih_folder(tmp_path / "data", patients=6, per_patient=3, size=32)
    P.prepare(data, tmp_path / "straight", size=16, workers=1, progress=False)
    real, calls = P._write_at, []

    def fill_after_5(fd, payload, offset):
        calls.append(offset)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, payload, offset)

    monkeypatch.setattr(P, "_write_at", fill_after_5)
    monkeypatch.setattr(P, "COMMIT_SECONDS", 0.0)  # commit after every chunk, as a long run would
    monkeypatch.setattr(P, "MAX_CHUNK", 1)
    with pytest.raises(DiskFullError, match=r"images.u8.part: no space left .*; it needs"):
        P.prepare(data, tmp_path / "cache", size=16, workers=1, progress=False)
    status = np.fromfile(tmp_path / "cache" / "work" / "status.u8", dtype=np.uint8)
    assert (status == 1).sum() == 5  # the rows written before the disk filled are kept as done
    monkeypatch.setattr(P, "_write_at", real)
    P.prepare(data, tmp_path / "cache", size=16, workers=1, progress=False)
    a, ia, _ = load_cache(tmp_path / "straight")
    b, ib, _ = load_cache(tmp_path / "cache")
    assert np.array_equal(np.asarray(a), np.asarray(b)) and ia.equals(ib)
