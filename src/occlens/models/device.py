"""Which device runs the model: one rule for the library, the command and the Ray workers, and one check that
a model already placed is run where it is."""

from __future__ import annotations

import torch

from ..core.errors import ConfigError, option


def pick_device(device: str | torch.device | None = None, name: str = option("device")) -> torch.device:
    """``device`` checked (``"cpu"``, ``"cuda"``, ``"cuda:N"``); ``None``: CUDA when it is available, else the CPU.

    ``name`` names the option in messages (by default :func:`~occlens.core.errors.option` ``("device")``, which
    each reader spells its own way: ``device`` in Python, ``--device`` on the command line).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        wanted = None
    if wanted is None or wanted.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"unknown device {str(device)!r}: {name} must be cpu or cuda (or cuda:N)",
            value=str(device), expected="cpu, cuda or cuda:N",
        )  # fmt: skip
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{name} {str(device)!r} was asked for, but CUDA is not available here; use cpu",
            value=str(device), expected="cpu (CUDA is not available here)", fix="use cpu",
        )  # fmt: skip
    return wanted


def same_device(home: torch.device, device: str | torch.device | None, fix: str) -> torch.device:
    """Where a model that is on ``home`` runs: ``home`` when ``device`` is None, else ``device`` checked
    (:func:`pick_device`), which must be ``home`` (``cuda`` is ``cuda:0``): occlens does not move a model.
    ``fix`` says how to put the model there, ``{device}`` standing for the device asked for."""
    if device is None:
        return home
    wanted = pick_device(device)
    if (wanted.type, wanted.index or 0) != (home.type, home.index or 0):
        there = fix.format(device=repr(str(wanted)))
        raise ConfigError(
            f"the model is on {home} but device={str(wanted)!r}; occlens does not move your model: {there}, or leave "
            f"device unset",
            option="device", value=str(device), expected=f"{home}, where the model is", fix=there,
        )  # fmt: skip
    return wanted
