"""A bounded load generator for ``chexnet serve`` (used by the load test and ``benchmarks/bench_serve.py``).

``requests`` uploads, ``concurrency`` at a time, cycling through the given samples; it stops after the last
answer or after ``timeout_s``, whichever first. Needs httpx (chexnet[dev]).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    name: str
    data: bytes
    field: str = "file"  # a wrong field name makes a bad request on purpose


@dataclass
class Answer:
    sample: int  # index into the samples
    status: int
    seconds: float
    body: dict | None


@dataclass
class LoadReport:
    answers: list[Answer]
    wall_s: float
    transport_errors: list[str] = field(default_factory=list)

    def latencies_ms(self) -> np.ndarray:
        """Latencies of the answered (200) requests."""
        return np.array([a.seconds * 1000 for a in self.answers if a.status == 200])

    def summary(self) -> dict:
        ok = self.latencies_ms()
        statuses: dict[str, int] = {}
        for a in self.answers:
            statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
        return {"requests": len(self.answers), "ok": int(len(ok)), "statuses": statuses,
                "transport_errors": len(self.transport_errors), "wall_s": round(self.wall_s, 3),
                "throughput_rps": round(len(self.answers) / self.wall_s, 2) if self.wall_s else None,
                "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None}


async def _load(url: str, samples: list[Sample], requests: int, concurrency: int, token: str | None,
                timeout_s: float) -> LoadReport:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    order = iter(range(requests))
    answers: list[Answer] = []
    errors: list[str] = []

    async def worker(client):
        for i in order:
            k = i % len(samples)
            s = samples[k]
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/predict", files={s.field: (s.name, s.data)}, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(f"{s.name}: {type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - t0
            try:
                body = r.json()
            except ValueError:
                body = None
            answers.append(Answer(k, r.status_code, took, body))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                errors.append(f"worker: {t.exception()!r}")
        if pending:
            errors.append(f"stopped after {timeout_s} s with {requests - len(answers)} requests unanswered")
        return LoadReport(answers, time.perf_counter() - started, errors)


def run_load(url: str, samples: list[Sample], requests: int = 400, concurrency: int = 20, token: str | None = None,
             timeout_s: float = 300) -> LoadReport:
    return asyncio.run(_load(url.rstrip("/"), samples, requests, concurrency, token, timeout_s))


def wait_ready(url: str, proc=None, timeout: float = 180) -> None:
    """Wait until the server at ``url`` answers /readyz with 200; RuntimeError if ``proc`` (its process) exits or
    ``timeout`` seconds pass first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url.rstrip("/") + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready within {timeout} s")
        time.sleep(0.2)


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(images, forward passes) so far, from /metrics."""
    values = {}
    for line in metrics_text.splitlines():
        if line.startswith(("chexnet_batch_size_sum", "chexnet_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("chexnet_batch_size_sum", 0.0), values.get("chexnet_batch_size_count", 0.0)


def mean_batch_size(metrics_text: str, since: str | None = None) -> float:
    """Mean images per forward pass, from /metrics (counting only what came after the ``since`` snapshot)."""
    images, passes = batch_totals(metrics_text)
    if since is not None:
        before = batch_totals(since)
        images, passes = images - before[0], passes - before[1]
    return images / passes if passes else 0.0
