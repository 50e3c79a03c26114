"""Writing files so that an interrupted run never leaves a partial one: temp name, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


NAME_BYTES = 255  # the longest file name most filesystems take


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 written as ``\\xNN`` (they come from the
    filesystem as lone surrogates, which UTF-8 output, SQLite and JSON refuse)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` (what it returns is ignored), then rename it to ``path``.

    The temporary name (``.NAME.xxxxxxxx.part``) keeps at most 48 characters of ``path``'s name, so it
    is never longer than a file name may be when ``path``'s own name is not.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:48]}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
