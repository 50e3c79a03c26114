"""The exceptions occlens raises for bad input: one base class, three kinds.

Every message says what was received, what was expected and how to fix it, in
one line, so the command line can print it as it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings


class OcclensError(Exception):
    """Base class of every error occlens raises on purpose."""


class ConfigError(OcclensError, ValueError):
    """A setting is invalid: window geometry, fill, output kind, label, target, batch size."""


class ImageError(OcclensError, ValueError):
    """The image cannot be used: unreadable, wrong shape or channel count, NaN/inf values."""


class ModelError(OcclensError, RuntimeError):
    """The model failed, or returned scores that do not fit what was declared."""


_INSIDE = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, contextlib.__file__)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message)`` pointed at the line that called into occlens (the first frame outside the
    package and the context managers it opens), however deep inside occlens the warning is raised."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes (Ray colours its messages)


def first_line(err: BaseException) -> str:
    """An exception's message as one line (its first, without colour codes), or its type's name when it has none."""
    text = ANSI.sub("", str(err)).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1].removeprefix("builtins.")  # the model's own message ends TorchScript's traceback
    return lines[0]


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters (from a file name, say) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def describe(err: OSError) -> str:
    """An operating-system error for people: its reason and the file it names."""
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return f"{err.strerror or err}{where}"
