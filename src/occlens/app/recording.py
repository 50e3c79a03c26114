"""Recording a run as images finish: their records in the manifest, a few per transaction, and the report
rewritten while the run goes on. Killed at any moment, a re-run finds every recorded image whole and redoes
the rest: an image is recorded only *after* its files are written."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..core.progress import Bar
from ..core.records import Record
from .folders import IMAGES
from .manifest import Manifest
from .summary import summarize_run


class Recorder:
    """Records finished images in the manifest, a few per transaction, and keeps the report up to date.

    :meth:`add` takes one image's record (its files written) and advances the run's ``bar`` (every image is
    recorded here, in the run's process, whichever worker process or Ray worker explained it); records wait at
    most ``every_s`` seconds or ``most`` records before they are written (each transaction costs an fsync),
    and :meth:`flush` writes them at once (the run calls it when it ends, however it ends; a record still
    waiting when the process is killed outright is an image the next run redoes). ``recorded`` (key ->
    record) is kept up to date with what is written.
    """

    def __init__(self, manifest: Manifest, recorded: dict[str, Record], bar: Bar, reporter: Reporter | None = None,
                 every_s: float = 0.5, most: int = 64) -> None:  # fmt: skip
        self.manifest, self.recorded, self.bar, self.reporter = manifest, recorded, bar, reporter
        self.every_s, self.most = every_s, most
        self.waiting: list[Record] = []
        self.since = time.perf_counter()

    def add(self, record: Record) -> None:
        if not self.waiting:
            self.since = time.perf_counter()
        self.waiting.append(record)
        self.bar.step(record.ok)
        if len(self.waiting) >= self.most or time.perf_counter() - self.since >= self.every_s:
            self.flush()

    def flush(self, report: bool = True) -> None:
        if self.waiting:
            self.manifest.add_all(self.waiting)
            self.recorded.update((r.key, r) for r in self.waiting)
            self.waiting = []
            if report and self.reporter is not None:
                self.reporter.maybe(self.recorded)

    def close(self, finished: bool = False) -> None:
        """Write what waits (the run writes the last report itself), and clear the bar (``finished``: its last
        count drawn first)."""
        try:
            self.flush(report=False)
        finally:
            if finished:
                self.bar.finish()
            self.bar.close()


class Reporter:
    """Rewrites the report while a run goes on: after a record is written, when ``every_s`` seconds have
    passed since the last report and at least ``1 / share`` times as long as the last one took, so that
    writing the report takes at most about ``share`` of the run's time. The run writes the last report
    itself when it ends, or (:meth:`write` with ``stopped``) one that says it stopped early."""

    def __init__(self, out: Path, keys: Sequence[str], title: str, names: Sequence[str] | None = None,
                 every_s: float = 5.0, share: float = 0.1) -> None:  # fmt: skip
        self.out, self.keys, self.title, self.names = out, keys, title, names
        self.every_s, self.share = every_s, share
        self.last = time.perf_counter()
        self.took = 0.0
        self.written = 0  # reports written during the run

    def maybe(self, recorded: dict[str, Record]) -> None:
        if time.perf_counter() - self.last < max(self.every_s, self.took / self.share):
            return
        start = time.perf_counter()
        self.write(recorded)
        self.last = time.perf_counter()
        self.took = self.last - start
        self.written += 1

    def write(self, recorded: dict[str, Record], stopped: bool = False) -> None:
        from ..present.report import write_report

        records = [recorded[k] for k in self.keys if k in recorded]
        summary = summarize_run(records, names=self.names)
        stopped = stopped and len(records) < len(self.keys)  # stopped with every image done: it finished
        write_report(self.out, records, summary, images=self.out / IMAGES, title=self.title, total=len(self.keys),
                     stopped=stopped)  # fmt: skip
