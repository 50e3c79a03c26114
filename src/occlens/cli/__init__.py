"""The ``occlens`` command: a thin shell over the library (:mod:`occlens.cli.commands`).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext

from ..core.errors import OcclensError, one_line
from ..engines.memory import keep_freed_blocks
from .commands import COMMANDS, OWN_CTRL_C
from .interrupt import second_interrupt_stops
from .parser import missing_folders, parser


def command() -> int:
    """The ``occlens`` command: :func:`main` in a process of its own, with glibc told to keep freed
    large blocks (see :mod:`occlens.engines.memory`: a dense run of the default model on 2 CPU cores
    took 6.1 s instead of 10.2 s)."""
    keep_freed_blocks()
    return main()


def say_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command prints it: one line on stderr, not Python's two with the source line."""
    print(f"occlens: warning: {one_line(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser(COMMANDS).parse_args(argv)
    fresh = missing_folders(getattr(args, "out", None))
    try:
        with warnings.catch_warnings(), nullcontext() if args.run in OWN_CTRL_C else second_interrupt_stops():
            warnings.showwarning = say_warning
            return args.run(args)
    except OcclensError as err:
        print(f"occlens: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        said = (
            "stopped"
            if args.run in OWN_CTRL_C
            else "interrupted; files already written are complete, nothing partial was left"
        )
        print(f"occlens: {said}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read the output went away (occlens labels | head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, when Python flushes stdout
        return 141  # as a program killed by SIGPIPE
    except Exception as err:
        if os.environ.get("OCCLENS_DEBUG"):
            raise
        print(
            f"occlens: internal error: {type(err).__name__}: {err} "
            "(OCCLENS_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        for folder in fresh:  # folders this run made and left empty (every image failed, say) go again
            try:
                folder.rmdir()
            except OSError:  # not empty (something was written), or gone: leave it
                break
