"""Helpers the benchmark scripts share: the machine's description, a free port, a median timer, a synthetic cache."""

from __future__ import annotations

import platform
import socket
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name as lscpu reports it (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the CPU flags that decide bf16 speed (AMX, AVX512-BF16), int8 speed (VNNI) and fp32's vector width
SPEED_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def machine(**extra) -> dict:
    """The "machine" entry of a result: CPU model, usable CPUs, the CPU flags that decide bf16 and int8 speed
    (present or not), date, and ``extra`` (versions, ...)."""
    from chexnet.environment import usable_cpus
    from chexnet.precision import cpu_flags

    flags = cpu_flags()
    return {"cpu": cpu_model(), "cpus": usable_cpus(), "flags": {f: f in flags for f in SPEED_FLAGS},
            "date": time.strftime("%Y-%m-%d"), **extra}


def make_cache(work: str | Path, images: int, size: int = 256) -> Path:
    """A prepared cache of ``images`` synthetic NIH-format images of ``size`` px under ``work`` (made once, reused).

    The data set goes to ``work/data-IMAGES-SIZE``, the cache to ``work/cache-IMAGES-SIZE``; a complete cache
    (its meta.json exists) is reused as is.
    """
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    work = Path(work)
    cache = work / f"cache-{images}-{size}"
    if not (cache / "meta.json").is_file():
        data = work / f"data-{images}-{size}"
        generate(data, images=images, size=size, seed=0, progress=False)
        prepare(data, cache, size=size, progress=False)
    return cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call_times(fn, reps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after ``warmup`` calls."""
    return statistics.median(call_times(fn, reps, warmup))
