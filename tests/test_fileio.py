"""Atomic writes: checkpoints, the cache and reports go through chexnet.fileio.atomic_write."""

import os

from chexnet.fileio import atomic_write


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind
