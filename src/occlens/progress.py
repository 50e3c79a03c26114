"""A one-line progress bar on stderr that stays quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Bar:
    """``bar(done, total)`` redraws the line; :meth:`close` ends it. Silent unless ``stream`` is a TTY."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self.width = label, width
        self.start = time.perf_counter()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        elapsed = time.perf_counter() - self.start
        filled = int(self.width * done / total)
        eta = elapsed / done * (total - done) if done else 0.0
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} windows, ETA {eta:4.1f}s"
        self.stream.write(line)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
