"""One model queue: every request's model work runs on one worker thread, one job at a time.

Concurrent requests then share the device instead of each holding a model's activations at once
(what runs a GPU out of memory). A job carries a :class:`Ticket`; setting it (the client went away)
stops the job before it starts or at its next progress call, between two batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import OcclensError


class Cancelled(Exception):
    """The job's client disconnected; its work stopped."""


class Busy(OcclensError):
    """The queue is full."""


@dataclass(eq=False)  # each ticket is itself (hashable by identity)
class Ticket:
    """A job's cancel flag; :meth:`check` raises :class:`Cancelled` once it is set."""

    event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Cancelled


@dataclass
class Counts:
    """What the queue did since it started (``GET /api/health`` shows it)."""

    waiting: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0


class ModelQueue:
    """Runs ``fn(ticket)`` jobs on one thread, in the order they came; at most ``limit`` waiting."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.counts = Counts()
        self._lock = threading.Lock()
        self._tickets: set[Ticket] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="occlens-model")

    async def run(self, fn: Callable[[Ticket], Any], ticket: Ticket) -> Any:
        """``fn(ticket)``'s value, once its turn came and it ran; :class:`Cancelled` if the ticket was set."""
        with self._lock:
            if self.counts.waiting >= self.limit:
                raise Busy(f"the server is busy ({self.limit} requests waiting for the model); try again shortly")
            self.counts.waiting += 1
            self._tickets.add(ticket)
        future = self._pool.submit(self._job, fn, ticket)
        try:
            return await asyncio.wrap_future(future)
        finally:
            with self._lock:
                self._tickets.discard(ticket)
                if future.cancelled():  # cancelled while it waited (its client went, or close()): it never ran
                    self.counts.waiting -= 1
                    self.counts.cancelled += 1

    def _job(self, fn: Callable[[Ticket], Any], ticket: Ticket) -> Any:
        with self._lock:
            self.counts.waiting -= 1
            self.counts.running += 1
        outcome = "failed"
        try:
            ticket.check()
            value = fn(ticket)
            outcome = "done"
            return value
        except Cancelled:
            outcome = "cancelled"
            raise
        finally:
            with self._lock:
                self.counts.running -= 1
                setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)

    def close(self) -> None:
        """Stop: jobs waiting never run, the running one stops at its next batch."""
        with self._lock:
            for ticket in self._tickets:
                ticket.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class DecodeQueue:
    """Runs decodings (an image file to what the request needs of it: the model's input, a mask, a thumbnail)
    on ``width`` threads of their own, in the order they came; at most ``limit`` wait. Each decoding is held
    to the memory budget (:func:`occlens.core.image.read_image`'s ``max_decode_mb``), so all at once hold at
    most ``width`` budgets; the model queue is not held up by them."""

    def __init__(self, width: int, limit: int = 64) -> None:
        self.width, self.limit = width, limit
        self.waiting = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="occlens-decode")

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)``'s value once a thread was free and it ran; :class:`Busy` when ``limit`` already wait.
        A request cancelled while its decoding waits frees its place; one cancelled while it runs leaves it to
        finish on its thread (the thread, not the request, holds the place)."""
        with self._lock:
            if self.waiting >= self.limit:
                raise Busy(f"the server is busy ({self.limit} images waiting to be decoded); try again shortly")
            self.waiting += 1

        def job() -> Any:
            with self._lock:
                self.waiting -= 1
            return fn(*args)

        future = self._pool.submit(job)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.cancelled():
                with self._lock:
                    self.waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
