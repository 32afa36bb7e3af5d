"""Facts about the running environment (usable CPUs, library versions recorded with results) and the optional
extras: ``require`` imports one or names the ``pip install`` that provides it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


DEBUG_ENV = "CHEXNET_DEBUG"


def debug_enabled() -> bool:
    """CHEXNET_DEBUG set to anything but empty or 0: full tracebacks and the libraries' own log lines."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity / cgroup pinning where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def library_versions(*packages: str) -> dict[str, str]:
    """chexnet's and Python's versions plus each installed distribution in ``packages`` (plain strings)."""
    from chexnet import __version__

    found = {"chexnet": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the ``pip install`` to run."""


def require(module: str, extra: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs the '{module}' package: pip install 'chexnet[{extra}]'") from None
