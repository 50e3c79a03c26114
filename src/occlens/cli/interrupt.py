"""Ctrl-C for the command: the first stops the run cleanly, a second stops the process at once.

Python runs its SIGINT handler only between bytecodes, so a model whose forward pass never returns (a
C++ loop, a TorchScript ``while True``) would ignore Ctrl-C. The signal's number is also written to a
pipe (``signal.set_wakeup_fd``) by the C-level handler, whatever the main thread is doing; a thread
reading that pipe ends the process on the second Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

FIRST = b"occlens: interrupting (press Ctrl-C again to stop at once)\n"
SECOND = (
    b"occlens: stopped at once (second Ctrl-C); the files written so far are complete, a temporary .part file "
    b"may remain (a re-run of occlens run removes it)\n"
)


@contextmanager
def second_interrupt_stops():
    """Within this block (main thread only), a second Ctrl-C ends the process with status 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        os.close(read)
        os.close(write)
        yield
        return
    watcher = threading.Thread(target=_watch, args=(read,), daemon=True, name="occlens-interrupt")
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write)  # the watcher reads end-of-file and ends
        watcher.join(timeout=1)
        os.close(read)


def _watch(read: int) -> None:
    count = 0
    while True:
        try:
            data = os.read(read, 64)
        except OSError:
            return
        if not data:
            return
        count += data.count(signal.SIGINT)
        if count == 1:
            os.write(sys.stderr.fileno(), FIRST)
        if count >= 2:
            os.write(sys.stderr.fileno(), SECOND)
            os._exit(130)
