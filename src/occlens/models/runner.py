"""Running the caller's model without changing it behind their back.

A ``torch.nn.Module`` in training mode is switched to eval mode for the
explanation (dropout and batch-norm statistics would otherwise make the map
depend on the batch) and every submodule's mode is restored afterwards; a warning
says so. The model is never moved or cast: the input goes to the model's device
and dtype instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..core.errors import ConfigError, warn
from .device import pick_device, same_device
from .forward import Forward
from .preprocess import Normalized


@dataclass(frozen=True)
class Runner:
    """A callable on N x C x H x W tensors, with the device and dtype its input must have."""

    forward: Forward
    device: torch.device
    dtype: torch.dtype
    channels: int | None  # what the first layer expects, when it can be read off the model


def _first(tensors: Iterator[torch.Tensor]) -> torch.Tensor | None:
    return next((t for t in tensors if t.is_floating_point()), None)


def _input_channels(module: torch.nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    return None


@contextmanager
def prepared(model, device=None, quiet: bool = False) -> Iterator[Runner]:
    """Yield a :class:`Runner` for ``model``; restore the model's train/eval modes on exit (``quiet``: without
    the warning, for a probe such as a model's output count when it is loaded; explaining says it)."""
    if not callable(model):
        raise ConfigError(
            f"model must be a torch.nn.Module or a callable on N x C x H x W tensors, got {type(model).__name__}"
        )
    ref = None
    if isinstance(model, torch.nn.Module):
        ref = _first(model.parameters())
        if ref is None:
            ref = _first(model.buffers())
    if ref is None:  # a callable, or a module without tensors: nothing to check it against
        wanted = torch.device("cpu") if device is None else pick_device(device)
    else:
        wanted = same_device(ref.device, device, "call model.to({device}) first")
    if not isinstance(model, torch.nn.Module):
        yield Runner(model, wanted, torch.float32, None)
        return
    modes = {m: m.training for m in model.modules()}
    if any(modes.values()) and not quiet:
        warn("the model was in training mode; occlens runs it in eval mode and restores training mode afterwards")
    try:
        model.eval()
        yield Runner(model, wanted, ref.dtype if ref is not None else torch.float32, _input_channels(model))
    finally:
        for m, training in modes.items():
            m.training = training


def computes_in_torch(model) -> bool:
    """Whether ``model`` is a torch module all the way down: not an adapter (ONNX Runtime, numpy) that a
    module such as :class:`~occlens.models.Normalized` merely wraps. Autocast, torch.compile and the
    torch allocator's batch sizes apply only then."""
    while isinstance(model, Normalized):
        model = model.model
    return isinstance(model, torch.nn.Module)
