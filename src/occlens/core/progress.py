"""Progress bars for the long jobs, from tqdm: explain's windows, a run's images, evaluate's maps.

Each job takes ``progress``: ``None`` (the default) draws a bar when someone is watching, that is when the
code runs in a notebook's kernel or stderr is a terminal (a log file gets no bar: there it is noise);
``True`` draws one anyway, ``False`` never. :func:`occlens.explain` takes a function ``progress(done, total)``
too, called instead of a bar.

In a notebook the bar is tqdm's widget where ipywidgets is installed, else tqdm's text bar, on stdout (stderr
is drawn as a red block there); neither way does tqdm warn. On a terminal the bar is tqdm's text bar on
stderr. The bar is cleared when its job ends, so the job's own output (a table, a result) follows it.

tqdm is imported when a bar is made, not with this module: the command's ``--help`` imports this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TextIO

from .checks import check_progress
from .errors import ConfigError, option

Progress = Callable[[int, int], None]  # progress(done, total)
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, JupyterLab, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; nothing is imported here
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return getattr(shell, "kernel", None) is not None


def someone_watches(stream: TextIO | None = None) -> bool:
    """Whether someone watches the job: a notebook's kernel, or ``stream`` (default stderr) a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return in_notebook() or bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def wants_bar(progress: bool | None) -> bool:
    """Whether ``progress`` (checked: None, True or False) asks for a bar here."""
    progress = check_progress(progress, "progress")
    return someone_watches() if progress is None else progress


def _widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def bar_class() -> type:
    """tqdm's widget bar in a notebook with ipywidgets, else its text bar (tqdm.auto without ipywidgets warns)."""
    if in_notebook() and _widgets():
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


class Bar:
    """One job's bar: ``bar(done, total)`` (the ``progress`` function's contract; ``total`` may grow, as the
    drill-down's passes and a list's images begin), or ``bar.step(ok)`` per item done; ``bar.close()`` clears
    it (:func:`print_above` prints a line without breaking it). It is drawn once ``total`` is known: at once,
    or at the first ``bar(done, total)``. A bar not ``shown`` only counts."""

    def __init__(self, progress: bool | None, unit: str, desc: str | None = None, total: int = 0) -> None:
        self.shown = wants_bar(progress)
        self.unit, self.desc = unit, desc
        self.done = self.failed = 0  # counted with a bar shown or not
        self.tqdm: Any = None
        if self.shown and total > 0:
            self._start(total)

    def _start(self, total: int) -> None:
        notebook = in_notebook()
        stream = sys.stdout if notebook else sys.stderr  # a notebook shows stderr as a red block
        self.tqdm = bar_class()(total=total, desc=self.desc, unit=f" {self.unit}", file=stream, leave=False,
                                bar_format=BAR_FORMAT, dynamic_ncols=not notebook)  # fmt: skip

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if not self.shown:
            return
        if self.tqdm is None:
            self._start(total)
        elif total != self.tqdm.total:
            self._total(total)
        self.tqdm.update(done - self.tqdm.n)

    def step(self, ok: bool = True, n: int = 1) -> None:
        """``n`` items done (one image, say), ``ok`` or failed (the bar counts the failures)."""
        self.done += n
        self.failed += not ok
        if self.tqdm is None:
            return
        if not ok:
            self.tqdm.set_postfix_str(f"{self.failed} failed", refresh=False)
        self.tqdm.update(n)

    def finish(self) -> None:
        """The job ended as planned: its last count drawn (tqdm draws at most 10 times a second), a bar it left
        short (a ``budget`` stops early) complete."""
        if self.tqdm is None:
            return
        if self.tqdm.total and self.tqdm.n < self.tqdm.total:
            self._total(self.tqdm.n)
        self.tqdm.refresh()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()

    def _total(self, total: int) -> None:
        self.tqdm.total = total
        widget = getattr(self.tqdm, "container", None)  # tqdm.notebook's: label, bar, label
        if widget is not None:
            widget.children[-2].max = total

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.finish()
        self.close()


@contextmanager
def reporting(progress: bool | Progress | None, unit: str, desc: str | None = None):
    """The ``progress(done, total)`` function a job calls: the caller's own function, or a :class:`Bar`'s (None
    when no bar is shown); the bar is cleared when the job ends."""
    if callable(progress):
        yield progress
        return
    if progress is not None and not isinstance(progress, bool):
        expected = "True (a bar), False (none), None (a bar in a notebook or on a terminal) or a function(done, total)"
        raise ConfigError(f"{option('progress')} must be {expected}, got {progress!r}", value=progress,
                          expected=expected)  # fmt: skip
    with Bar(progress, unit, desc) as bar:
        yield bar if bar.shown else None


def print_above(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` (to stderr by default) without breaking a bar being drawn there."""
    stream = sys.stderr if stream is None else stream
    tqdm = sys.modules.get("tqdm.std")  # a bar can only be drawn once tqdm is imported
    if tqdm is None:
        print(line, file=stream)
    else:
        tqdm.tqdm.write(line, file=stream)
