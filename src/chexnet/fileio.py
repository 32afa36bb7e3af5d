"""Crash-safe file writes shared by checkpoints, the image cache and reports, and the full-disk error.

``atomic_write(path, data)`` writes to a temporary file in the same folder, flushes, fsyncs, renames it over
``path`` and fsyncs the folder: a reader (or a run killed mid-write) sees the old file or the new one, never half.

A full disk (ENOSPC, or a quota: EDQUOT) is a :class:`DiskFullError` naming the file being written, the space
it needs where that is known, and what is free there (:func:`disk_full`); :func:`check_free_space` refuses
work up front that would not fit. Every atomic write that fails leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(RuntimeError):
    """No space left where chexnet writes; the message names the file, the space needed and the space free."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def human_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError("unreachable")


def free_bytes(path: str | os.PathLike) -> tuple[Path, int]:
    """(the nearest existing folder of ``path``, the bytes free on its file system)."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder, shutil.disk_usage(folder).free


def disk_full(path: str | os.PathLike, needed: int | None = None) -> DiskFullError:
    """The error for a write of ``path`` that found no space (``needed``: its bytes, where known)."""
    folder, free = free_bytes(Path(path).parent)
    need = f"; it needs {human_size(needed)}" if needed else ""
    return DiskFullError(f"{path}: no space left on the device ({human_size(free)} free in {folder}{need}): free "
                         f"space there, then run the same command again (what is finished is kept)")


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse, before starting, ``what`` that would write ``needed`` bytes at ``path`` where less is free."""
    folder, free = free_bytes(path)
    if needed > free:
        raise DiskFullError(f"{path}: {what} needs {human_size(needed)} but {folder} has {human_size(free)} free: "
                            f"free space there (or choose another folder), then run the same command again")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically with ``data`` (bytes, text, or a function that writes into a binary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, len(data) if isinstance(data, (bytes, str)) else None) from None
        raise
    fsync_dir(path.parent)
