"""A real full disk: training, prepare and evaluate write onto a small tmpfs that this test mounts (as root) and
remounts. Each stops with an error naming the file and the space; the previous checkpoint, the finished part of
the cache and earlier outputs are intact; after space is freed, the same command finishes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from chexnet.checkpoint import check_recorded_digest, load_checkpoint
from chexnet.data.cache import load_cache
from tests.conftest import make_nih_folder
from tests.helpers import tiny_train_args


def _mount(point, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True,
                   capture_output=True)


def _resize(point, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs at tmp_path/disk (200 MB to start; _resize changes it); skipped where it cannot be mounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    point = tmp_path / "disk"
    point.mkdir()
    try:
        _mount(point, "200m")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc.stderr.decode().strip() or exc}): a container without "
                    f"CAP_SYS_ADMIN")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _used(point) -> int:
    st = os.statvfs(point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_training_and_evaluate_on_a_full_disk_stop_clearly_and_resume(small_disk, tiny_cache, chexnet_main):
    run = small_disk / "run"
    chexnet_main(*tiny_train_args(tiny_cache, run, epochs=1))
    ckpt = (run / "checkpoints" / "last.pt").stat().st_size
    _resize(small_disk, _used(small_disk) + ckpt // 2)  # epoch 2's last.pt cannot be written
    proc = chexnet_main(*tiny_train_args(tiny_cache, run, epochs=2), "--resume", "auto", check=False)
    assert proc.returncode == 2 and "no space left on the device" in proc.stderr, proc.stderr[-2000:]
    assert str(run) in proc.stderr and " free in " in proc.stderr and "Traceback" not in proc.stderr
    for name in ("last.pt", "best.pt"):  # epoch 1's checkpoints, whole and as recorded
        assert load_checkpoint(run / "checkpoints" / name)["epoch"] == 1
        check_recorded_digest(run, run / "checkpoints" / name)

    _resize(small_disk, _used(small_disk) + 16 * 1024)  # evaluate's reports do not fit
    proc = chexnet_main("evaluate", run, "--bootstrap", "10", check=False)
    assert proc.returncode == 2 and "no space left" in proc.stderr and "Traceback" not in proc.stderr

    _resize(small_disk, 200 << 20)  # space freed: the same commands finish
    chexnet_main(*tiny_train_args(tiny_cache, run, epochs=2), "--resume", "auto")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    chexnet_main("evaluate", run, "--bootstrap", "10")
    assert (run / "eval" / "test" / "metrics.json").is_file()


def test_prepare_onto_a_full_disk_is_refused_up_front_then_finishes(small_disk, tmp_path, chexnet_main):
    data = make_nih_folder(tmp_path / "data", patients=8, per_patient=3, size=64)
    _resize(small_disk, 64 * 1024)
    proc = chexnet_main("prepare", "--data", data, "--out", small_disk / "cache", "--size", "64", "--workers", "1",
                        check=False)
    assert proc.returncode == 2 and "images.u8.part: caching 24 more images needs" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    _resize(small_disk, 4 << 20)
    chexnet_main("prepare", "--data", data, "--out", small_disk / "cache", "--size", "64", "--workers", "1")
    assert len(load_cache(small_disk / "cache")[1]) == 24
