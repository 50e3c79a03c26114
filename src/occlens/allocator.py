"""The occlens command's allocator setting: glibc keeps freed large blocks for the next batch.

glibc hands freed blocks above its mmap threshold (dynamic, at most 32 MB) back to the OS, and the
next batch of occluded images faults every page of its activations in again, zeroed by the kernel:
on 2 CPU cores more than half of a dense run's time (``benchmarks/cpu_batch.py``). Raising the
mmap and trim thresholds keeps those blocks in the heap for reuse. The setting is process-wide, so
only the ``occlens`` command makes it, for its own process; a library caller's process is left as
it is (set ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` to get the same).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GB come from the heap and are reused
TRIM_THRESHOLD = 2 << 30  # the heap's free top is given back only beyond 2 GB
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
ENOUGH = 256 << 20  # an mmap threshold from the environment this high keeps a 32-image batch's blocks

_kept = False  # set once keep_freed_blocks() succeeds


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether they were set.

    Nothing is changed off Linux, without glibc, or where the environment already sets either
    threshold (the user's choice wins).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _kept
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


def keeps_freed_blocks() -> bool:
    """Whether this process keeps freed large blocks: :func:`keep_freed_blocks` set it (the occlens
    command), or the environment raised glibc's mmap threshold to :data:`ENOUGH` or more."""
    if _kept:
        return True
    try:
        return int(os.environ.get("MALLOC_MMAP_THRESHOLD_", "0")) >= ENOUGH
    except ValueError:
        return False
