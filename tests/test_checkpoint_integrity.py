"""Checkpoints survive a crash at any moment of a write, and a damaged or swapped one is named, not loaded:
empty, truncated and bit-flipped files are CheckpointErrors saying what is wrong; run.json's digests find a
swapped file; SIGKILL during a stream of writes always leaves files that load and match their digests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from chexnet.checkpoint import (
    PREVIOUS,
    CheckpointError,
    CheckpointSaver,
    check_recorded_digest,
    file_sha256,
    load_checkpoint,
)

WRITER = r"""
import sys, torch
from chexnet.checkpoint import CheckpointSaver
run, start = sys.argv[1], int(sys.argv[2])
saver = CheckpointSaver(run, "val_loss")
w = torch.arange(1_500_000, dtype=torch.float32)  # 6 MB: a write takes long enough to be hit
for i in range(start, start + 100_000):
    saver.save({"model": {"w": w + i}, "epoch": i, "global_step": i}, improved=i % 3 == 0)
    print(i, flush=True)
"""


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"labels": ["A"]}))
    return run


def _state(i: int) -> dict:
    return {"model": {"w": torch.full((1000,), float(i))}, "epoch": i, "global_step": 10 * i}


def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path):
    run = _run_dir(tmp_path)
    CheckpointSaver(run, "val_loss").save(_state(1))
    good = run / "checkpoints" / "last.pt"
    assert load_checkpoint(good)["epoch"] == 1
    data = good.read_bytes()
    cases = {"empty.pt": (b"", "empty"), "half.pt": (data[: len(data) // 2], "truncated"),
             "text.pt": (b"not a checkpoint at all", "truncated or not a checkpoint")}
    flipped = bytearray(data)
    offset = data.index(np.full(1000, 1.0, np.float32).tobytes()[:64]) + 100  # inside the tensor's bytes
    flipped[offset] ^= 0x10
    cases["flipped.pt"] = (bytes(flipped), "fails its CRC-32 check")
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=why) as err:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "Traceback" not in str(err.value)


def test_run_json_records_digests_the_previous_last_is_kept_and_a_swapped_file_is_refused(tmp_path):
    run = _run_dir(tmp_path)
    saver = CheckpointSaver(run, "val_loss")
    saver.save(_state(1), improved=True)
    saver.save(_state(2))
    ckpts = run / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 2 and load_checkpoint(ckpts / PREVIOUS)["epoch"] == 1
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 1
    recorded = json.loads((run / "run.json").read_text())["checkpoints"]
    for name in ("last.pt", PREVIOUS, "best.pt"):
        assert recorded[name]["sha256"][0] == file_sha256(ckpts / name)
        check_recorded_digest(run, ckpts / name)
    assert recorded["last.pt"]["epoch"] == 2 and recorded["last.pt"]["global_step"] == 20
    (ckpts / "best.pt").write_bytes((ckpts / "last.pt").read_bytes())  # a valid checkpoint, but not best.pt's
    with pytest.raises(CheckpointError, match=r"best.pt: changed since chexnet wrote it .*--trust-changed"):
        check_recorded_digest(run, ckpts / "best.pt")
    check_recorded_digest(run, ckpts / "best.pt", trust_changed=True)
    check_recorded_digest(tmp_path, ckpts / "best.pt")  # not that run's file: not checked


def _wait_for_lines(proc, n: int, timeout: float = 60.0) -> int:
    last, deadline = -1, time.monotonic() + timeout
    for _ in range(n):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise AssertionError(f"the writer stopped early: {proc.stderr.read()[-2000:]}")
        last = int(line)
    return last


def test_sigkill_during_checkpoint_writes_always_leaves_files_that_load(tmp_path):
    run = _run_dir(tmp_path)
    rng = np.random.default_rng(7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    start, kills = 0, 3
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_for_lines(proc, 2)
            time.sleep(float(rng.uniform(0.0, 0.15)))  # a random moment of the writes that follow
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        ckpts = run / "checkpoints"
        last = load_checkpoint(ckpts / "last.pt")
        for name in ("last.pt", PREVIOUS, "best.pt"):
            if (ckpts / name).exists():
                state = load_checkpoint(ckpts / name)
                assert torch.equal(state["model"]["w"][:3], torch.arange(3.0) + state["epoch"])
                check_recorded_digest(run, ckpts / name)
        assert load_checkpoint(ckpts / "best.pt")["epoch"] % 3 == 0
        start = int(last["epoch"]) + 1  # the next writer continues from the newest state, as --resume auto does
        leftovers = [p.name for p in ckpts.iterdir() if p.name not in ("last.pt", "best.pt", PREVIOUS)]
        assert all(n.endswith(".tmp") for n in leftovers)  # at most a temporary file of the killed write
