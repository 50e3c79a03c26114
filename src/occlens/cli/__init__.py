"""The ``occlens`` command: a thin shell over the library (:mod:`occlens.cli.commands`).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error, 130 interrupted, 141 the reader
of the output went away (as SIGPIPE).
"""

from __future__ import annotations

import os
import select
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext

from ..core.errors import OcclensError, one_line
from ..core.progress import print_above
from .commands import COMMANDS
from .errors import said
from .interrupt import second_interrupt_stops
from .parser import missing_folders, parser


def command() -> int:
    """The ``occlens`` command: :func:`main` in a process of its own, with glibc told to keep freed
    large blocks (see :mod:`occlens.engines.memory`: a dense run of the default model on 2 CPU cores
    took 6.1 s instead of 10.2 s), once the flags are read: ``--help``, ``--version`` and a bad flag answer
    without loading torch."""
    return main(keep_freed=True)


def say_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command prints it: one line on stderr (above the bar, if one is drawn), not Python's two
    with the source line."""
    print_above(f"occlens: warning: {one_line(str(message))}")


def internal_error(err: BaseException) -> int:
    print(
        f"occlens: internal error: {type(err).__name__}: {err} (OCCLENS_DEBUG=1 shows the traceback; please report it)",
        file=sys.stderr,
    )
    return 1


def reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured, replaced)
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def main(argv: Sequence[str] | None = None, keep_freed: bool = False) -> int:
    """Run the command line; return the exit code. ``keep_freed``: the process is the command's own (see
    :func:`command`)."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser(COMMANDS).parse_args(argv)
    if keep_freed:
        from ..engines.memory import keep_freed_blocks

        keep_freed_blocks()
    fresh = missing_folders(getattr(args, "out", None))
    own_ctrl_c = getattr(args, "own_ctrl_c", False)  # occlens serve: uvicorn stops on the first Ctrl-C
    try:
        with warnings.catch_warnings(), nullcontext() if own_ctrl_c else second_interrupt_stops():
            warnings.showwarning = say_warning
            code = args.run(args)
        sys.stdout.flush()  # here, not at exit: a reader gone away (occlens labels | head) is seen below
        return code
    except OcclensError as err:
        print(f"occlens: error: {one_line(said(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if own_ctrl_c:
            print("occlens: stopped", file=sys.stderr)
        else:
            print("occlens: interrupted; files already written are complete, nothing partial was left", file=sys.stderr)
        return 130
    except BrokenPipeError as err:
        if not reader_gone():  # another pipe broke: an error like any other
            return internal_error(err)
        devnull = os.open(os.devnull, os.O_WRONLY)  # whoever read the output went away: nothing more to say,
        os.dup2(devnull, sys.stdout.fileno())  # nor at exit, when Python flushes stdout again
        os.close(devnull)
        return 141  # as a program killed by SIGPIPE
    except Exception as err:
        if os.environ.get("OCCLENS_DEBUG"):
            raise
        return internal_error(err)
    finally:
        for folder in fresh:  # folders this run made and left empty (every image failed, say) go again
            try:
                folder.rmdir()
            except OSError:  # not empty (something was written), or gone: leave it
                break
