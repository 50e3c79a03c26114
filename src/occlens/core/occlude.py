"""Occluded copies and their δL, for images and volumes alike: pure torch functions, the reference an engine
integration reuses and tests hold engines to.

A batch of occluded copies is built in a buffer of ``batch x C x (spatial)`` that is filled from the input and
then, window by window, gets the fill's values in that window's box: memory is one batch of copies (``batch x
volume``) and the input and fill once, never a mask per window (a boolean mask of a 512 x 512 x 300 volume is 79
MB a window) nor a copy of the whole volume per window beyond the batch. The buffer can be reused from batch to
batch (``out=``), so a run allocates it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError, ImageError
from .grid import Grid, VolumeGrid
from .scoring import log_probs, scores_of

COPY_SHARE = 0.25  # of the memory available, what a batch of occluded copies may take; the rest: activations


def window_boxes(grid: Grid | VolumeGrid, indices) -> list[tuple[slice, ...]]:
    """The boxes of windows ``indices`` (raster order) as one slice per spatial axis."""
    spans = grid.spans()
    boxes = []
    for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist():
        index = np.unravel_index(i, grid.shape)
        boxes.append(tuple(slice(int(s[k]), int(e[k])) for (s, e), k in zip(spans, index, strict=True)))
    return boxes


def occluded_batch(
    x: torch.Tensor, fill: torch.Tensor, grid: Grid | VolumeGrid, indices, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``len(indices)`` occluded copies of ``x`` (C x H x W or C x D x H x W): copy ``j`` is ``x`` with window
    ``indices[j]``'s box (every channel) taken from ``fill`` (the same shape as ``x``). ``out``: a buffer of at
    least that many copies to write into (its first rows are returned), else a new one."""
    boxes = window_boxes(grid, indices)
    if x.shape != fill.shape or tuple(x.shape[1:]) != tuple(grid.image_shape):
        raise ValueError(f"input {tuple(x.shape)} and fill {tuple(fill.shape)} do not match the grid's "
                         f"{tuple(grid.image_shape)}")  # fmt: skip
    n = len(boxes)
    if out is None:
        out = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device)
    batch = out[:n]
    batch.copy_(x.expand_as(batch))
    for j, box in enumerate(boxes):
        batch[(j, slice(None), *box)] = fill[(slice(None), *box)]
    return batch


def batch_for(copy_bytes: int, windows: int, available: int, share: float = COPY_SHARE) -> int:
    """How many occluded copies of ``copy_bytes`` each a batch may hold: ``share`` of the ``available`` bytes, at
    most ``windows``, at least 1; a single copy that does not fit is refused in one line saying what it needs."""
    budget = int(available * share)
    if copy_bytes > budget:
        raise ImageError(
            f"one occluded copy of the input needs {_mb(copy_bytes)}, more than {share:.0%} of the {_mb(available)} "
            f"available; crop or resample the volume, or run on a machine with more memory"
        )
    return max(1, min(windows, budget // max(1, copy_bytes)))


def available_memory(device: torch.device | str) -> int:
    """Bytes free for a run on ``device``: CUDA's free memory, or the host's available memory (Linux's
    MemAvailable; elsewhere, 4 GB as a guess)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


def class_score(target: int, output: str = "logits") -> Callable[[torch.Tensor], torch.Tensor]:
    """The class score ``s = log P(y=target | x)`` of a classifier's outputs (DESIGN §1), float64."""

    def score(raw) -> torch.Tensor:
        scores = scores_of(raw, raw.shape[0] if isinstance(raw, torch.Tensor) else len(raw))
        return log_probs(scores, output, [target])[:, 0]

    return score


def occlusion_delta(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    fill: torch.Tensor,
    grid: Grid | VolumeGrid,
    target: int | Callable | None = None,
    output: str = "logits",
    batch_size: int | None = None,
    windows: Sequence[int] | None = None,
) -> tuple[np.ndarray, int | None]:
    """The seed's ``δL_i = L - L_occl_i = s(x_occl_i) - s(x)`` of each window, for an image (C x H x W, a
    :class:`Grid`) or a volume (C x D x H x W, a :class:`VolumeGrid`) in [0, 1] and a fill of the same shape.

    ``target``: a class index (``s = log P(y=target)`` of ``output``'s kind), None (the predicted class Q of the
    clean input), or a callable from the model's N-row output to N scores. Returns ``grid.shape`` float64 δL
    (negative: the window supported the target; only ``windows`` filled, the rest NaN, when given) and the class
    explained (None for a callable). ``batch_size``: copies per forward pass; None picks it from free memory
    (:func:`batch_for`). Runs under ``torch.no_grad``; the model is called as it is (its mode is the caller's).
    """
    if x.ndim != len(grid.image_shape) + 1:
        raise ImageError(f"input of shape {tuple(x.shape)} does not fit a grid of {len(grid.image_shape)} axes")
    order = np.arange(grid.size) if windows is None else np.asarray(windows, dtype=np.int64).reshape(-1)
    if batch_size is None:
        batch_size = batch_for(x.numel() * x.element_size(), len(order), available_memory(x.device))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", option="batch_size", value=batch_size)
    with torch.no_grad():
        clean = model(x[None])
        cls = None
        if target is None:
            cls = int(torch.argmax(log_probs(scores_of(clean, 1), output)[0]))
        elif not callable(target):
            cls = int(target)
        score = target if callable(target) else class_score(cls, output)
        base = float(torch.as_tensor(score(clean), dtype=torch.float64).reshape(-1)[0])
        delta = np.full(grid.size, np.nan)
        buffer = torch.empty((min(batch_size, len(order)), *x.shape), dtype=x.dtype, device=x.device)
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            batch = occluded_batch(x, fill, grid, part, out=buffer)
            got = torch.as_tensor(score(model(batch)), dtype=torch.float64).reshape(-1).cpu().numpy()
            delta[part] = got - base
    return delta.reshape(grid.shape), cls


def copies_per_batch(shape: Sequence[int], dtype: torch.dtype, windows: int, device="cpu") -> int:
    """:func:`batch_for` for an input of ``shape`` and ``dtype`` on ``device``: the batch size
    :func:`occlusion_delta` picks when given none."""
    copy_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return batch_for(copy_bytes, windows, available_memory(device))
