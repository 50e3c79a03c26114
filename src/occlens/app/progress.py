"""One-line progress bars on stderr that stay quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Line:
    """A line of a terminal redrawn in place: :meth:`draw` replaces it, :meth:`close` clears it.
    Silent unless ``stream`` (default stderr) is a TTY."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.start = time.perf_counter()
        self.drawn = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def gauge(self, done: int, total: int) -> str:
        """``[####....]`` for ``done`` of ``total``."""
        filled = int(self.width * done / total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}]"

    def draw(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r{text}\033[K")
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


class Bar(Line):
    """``bar(done, total)``: ``label [###...] done/total windows, ETA``."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 28) -> None:
        super().__init__(stream, width)
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        eta = self.elapsed() / done * (total - done) if done else 0.0
        self.draw(f"{self.label} {self.gauge(done, total)} {done}/{total} windows, ETA {eta:4.1f}s")


class RunBar(Line):
    """``images done/total, failures, images/s, ETA`` on one line of stderr; silent unless it is a TTY."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        super().__init__(stream, width)
        self.enabled = self.enabled and total > 0
        self.total = total
        self.done = self.failed = 0

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        elapsed = self.elapsed()
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bad = f", {self.failed} failed" if self.failed else ""
        gauge = self.gauge(self.done, self.total)
        self.draw(f"run {gauge} {self.done}/{self.total} images{bad}, {rate:.1f}/s, ETA {duration(eta)}")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
