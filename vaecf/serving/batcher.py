"""Dynamic batching: concurrent requests gathered into one model call.

Every user to score is a :class:`Job` (their known items' columns, ``k``, ``exclude_seen``; a
batch's CSR is built once, when it is scored). Jobs wait in a bounded :class:`asyncio.Queue`;
one worker coroutine takes the first, gathers more until the batch holds ``max_batch`` users or
``max_wait`` seconds have passed, and scores the whole batch with one
:func:`vaecf.serving.recommender.score_request` — one :meth:`Recommender.top_k` call — on a
single worker thread, so the event loop keeps accepting requests while the model runs. Requests
that arrive during a model call form the next batch.

How long to wait: a batch closes early once it is as large as the previous one. A lone client's
batches hold one user, so it never waits; 64 clients that got their answers together come back
together, and their batch closes as soon as the 64th arrives, or after ``max_wait`` if some do
not. Whatever is already queued is always taken (up to ``max_batch``) without waiting, also
when the wait ends: while the event loop parses a burst of requests the worker runs only after
them, often after its wait has expired, and closing with the jobs it had taken by then left the
rest of the burst to the next call (at 64 clients, batches of 1 and 63 users alternated: a whole
model call for one user in every cycle).

A batch whose users ask for different ``k`` is scored at the largest and each answer cut to its
own ``k`` (top-k of the top-k); users asking for ``exclude_seen`` true and false in one batch take
one call per value.

The queue is bounded: :meth:`Batcher.submit` raises :class:`Overloaded` at once when it is full
(the HTTP layer answers 503 with Retry-After), so overload never grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaecf.serving.items import Request, rows_of_columns
from vaecf.serving.recommender import Recommender, score_request


class Overloaded(Exception):
    """The queue is full; try again later."""


@dataclass
class Job:
    """One user to score.

    Attributes:
        columns: the user's known items, sorted distinct int32 columns
            (:func:`vaecf.serving.items.known_columns`).
        k: items to return.
        exclude_seen: never return the user's own items.
        future: set to ``(items, scores)`` by the worker.
    """

    columns: np.ndarray
    k: int
    exclude_seen: bool
    future: asyncio.Future = field(repr=False, default=None)  # type: ignore[assignment]


def score_jobs(recommender: Recommender, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
    """``(items, scores)`` of each job, through the same call ``vaecf recommend`` makes: one
    :func:`score_request` per ``exclude_seen`` value present (usually one), at the jobs'
    largest ``k``, each answer cut to its own ``k``."""
    results: list[tuple[list[Any], list[float]] | None] = [None] * len(jobs)
    for exclude in (True, False):
        picked = [i for i, job in enumerate(jobs) if job.exclude_seen is exclude]
        if not picked:
            continue
        seen = rows_of_columns([jobs[i].columns for i in picked], recommender.item_map.n_items)
        k = max(jobs[i].k for i in picked)
        recs = score_request(recommender, Request(None, seen), k, exclude)
        for i, items, scores in zip(picked, recs.items, recs.scores, strict=True):
            results[i] = (items[: jobs[i].k], scores[: jobs[i].k])
    return results  # type: ignore[return-value]


class Batcher:
    """The queue and its worker. Create inside the running event loop, then :meth:`start`.

    Args:
        recommender: the model to serve.
        max_batch: most users per model call.
        max_wait: seconds a batch may wait to fill.
        max_queue: most users waiting; beyond it :meth:`submit` raises :class:`Overloaded`.
        on_batch: called with (users, seconds) after each model call (metrics).
        on_depth: called with the number of users waiting whenever it changes (metrics).
    """

    def __init__(self, recommender: Recommender, max_batch: int = 256, max_wait: float = 0.002,
                 max_queue: int = 1024,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_depth = on_depth or (lambda depth: None)
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaecf-model")
        self._task: asyncio.Task | None = None
        self._target = 1
        self.batches = 0

    @property
    def depth(self) -> int:
        """Users waiting in the queue (not counting the batch being scored)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="vaecf-batcher")

    async def stop(self) -> None:
        """Stop the worker (after the HTTP server has finished its in-flight requests)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
        for job in self._drain_now():
            if not job.future.done():
                job.future.set_exception(Overloaded())

    async def submit(self, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
        """Queue ``jobs`` (all or none) and wait for their answers.

        Raises:
            Overloaded: the queue cannot take them all now.
        """
        if self.max_queue - self._queue.qsize() < len(jobs):
            raise Overloaded()
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
            self._queue.put_nowait(job)
        self.on_depth(self.depth)
        try:
            if len(jobs) == 1:  # the common case, without gather's wrapper future
                return [await jobs[0].future]
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:
            # The client went away: the worker skips jobs whose future is cancelled.
            for job in jobs:
                job.future.cancel()
            raise

    def _drain_now(self, into: list[Job] | None = None, limit: int | None = None) -> list[Job]:
        """Move queued jobs into ``into`` (at most up to ``limit`` jobs in it) without waiting."""
        into = [] if into is None else into
        while (limit is None or len(into) < limit) and not self._queue.empty():
            into.append(self._queue.get_nowait())
        return into

    async def _gather(self) -> list[Job]:
        """The next batch (see the module docstring for when it closes)."""
        batch = [await self._queue.get()]
        self._drain_now(batch, self.max_batch)
        target = min(self._target, self.max_batch)
        if len(batch) < target and self.max_wait > 0:
            # One timeout around the whole wait, not asyncio.wait_for per job: that wraps each
            # get() in a task of its own. A get() cut short leaves its job in the queue.
            deadline = asyncio.get_running_loop().time() + self.max_wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while len(batch) < target:
                        batch.append(await self._queue.get())
                        self._drain_now(batch, self.max_batch)
            self._drain_now(batch, self.max_batch)   # queued while the worker waited its turn
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self.on_depth(self.depth)
            self._target = len(batch)
            jobs = [job for job in batch if not job.future.done()]
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, score_jobs, self.recommender, jobs)
            except Exception as error:  # noqa: BLE001 - reported to each waiting request
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(jobs), time.perf_counter() - start)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
