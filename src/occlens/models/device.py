"""Which device runs the model: one rule for the library, the command and the Ray workers."""

from __future__ import annotations

import torch

from ..core.errors import ConfigError


def pick_device(device: str | torch.device | None = None, name: str = "device") -> torch.device:
    """``device`` checked (``"cpu"``, ``"cuda"``, ``"cuda:N"``); ``None``: CUDA when it is available, else the CPU.

    ``name`` names the option in messages (``"--device"`` on the command line).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        wanted = None
    if wanted is None or wanted.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {str(device)!r}: {name} must be cpu or cuda (or cuda:N)")
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name} {str(device)!r} was asked for, but CUDA is not available here; use cpu")
    return wanted
