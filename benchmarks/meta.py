"""How, when and where a benchmark ran: the ``meta`` object every file in ``benchmarks/results/`` carries.

``meta(**more)`` gives ``{"command", "date", "cpu": {"model", "flags"}, "gpu", "versions", "cpu_count"}`` and
the script's own facts (``more``). The docs' Speed page is generated from these files and refuses one
without them (``tools/docs_gen.py``). A script imports it as ``from meta import meta`` (``benchmarks/`` is
the script's own folder).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata

WANTED = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")  # what matters to torch


def cpu() -> dict:
    """The CPU's model name and the vector extensions that matter to torch on it (lscpu's, on Linux)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", platform.processor() or "unknown"),
            "flags": [f for f in WANTED if f in flags]}  # fmt: skip


def gpu() -> str | None:
    """The CUDA device's name when torch is imported and sees one, else None (a CPU run)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return None


def versions() -> dict:
    """Python's and the installed distributions' versions (read from their metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "occlens"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def meta(**more) -> dict:
    """This run's ``meta``: the command line as typed, today's date, the CPU, the GPU, the versions, ``more``."""
    command = " ".join(["python", *(shlex.quote(a) for a in sys.argv)])
    return {"command": command, "date": datetime.date.today().isoformat(), "cpu": cpu(), "gpu": gpu(),
            "versions": versions(), "cpu_count": os.cpu_count(), **more}  # fmt: skip
