"""Dynamic batching: concurrent requests share one forward pass.

Requests put their decoded cache row on a queue; one task takes the first, then waits at most ``max_wait_ms``
for more, up to ``max_batch``, and runs the batch on the model thread (never on the event loop). The queue holds
at most ``max_queue`` rows (QueueFull beyond). Rows that could not be decoded never reach it, and if a batch's
forward pass fails, its rows are retried one by one, so one request cannot fail another.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already: the caller answers 503 with Retry-After."""


@dataclass
class Timing:
    queue_ms: float
    inference_ms: float
    batch_size: int


class Batcher:
    def __init__(self, infer, executor: Executor, max_batch: int = 16, max_wait_ms: float = 10.0,
                 on_batch=None, max_queue: int | None = None):
        self.infer, self.executor = infer, executor
        self.max_queue = max_queue  # None: unbounded
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch  # called with (batch size, seconds of inference)
        self.waiting: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None

    def depth(self) -> int:
        return len(self.waiting)

    def full(self) -> bool:
        return self.max_queue is not None and len(self.waiting) >= self.max_queue

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="chexnet-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        while self.waiting:  # nothing will run them now
            _, future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(RuntimeError("server shutting down"))

    async def submit(self, row: np.ndarray) -> tuple[np.ndarray, Timing]:
        """The row's probabilities, once its batch has run; QueueFull if ``max_queue`` rows wait already."""
        if self.full():
            raise QueueFull(f"{len(self.waiting)} images wait for a forward pass already (--max-queue)")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((row, future, time.perf_counter()))
        self.arrived.set()
        return await future

    async def _collect(self) -> list:
        # a deque and an Event rather than asyncio.Queue + wait_for: a timed-out wait can then lose no request
        loop = asyncio.get_running_loop()
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = loop.time() + self.max_wait
        while len(self.waiting) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
        return [item for item in batch if not item[1].done()]  # a client that left no longer waits

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.infer, np.stack([b[0] for b in batch]))
                outcomes = list(probs)
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"the model returned {len(outcomes)} rows for a batch of {len(batch)}")
            except Exception as exc:  # find the row at fault: each alone (a batch of one already was alone)
                outcomes = [exc] if len(batch) == 1 else [await self._alone(row) for row, _, _ in batch]
            took = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(batch), took)
            for (row, future, queued), out in zip(batch, outcomes):
                if future.done():
                    continue
                if isinstance(out, Exception):
                    future.set_exception(out)
                else:
                    future.set_result((out, Timing((started - queued) * 1000, took * 1000, len(batch))))

    async def _alone(self, row):
        try:
            return (await asyncio.get_running_loop().run_in_executor(self.executor, self.infer, row[None]))[0]
        except Exception as exc:
            return exc
