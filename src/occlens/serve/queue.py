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
