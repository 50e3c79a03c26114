"""Occluded copies and their δL, for images and volumes alike: pure torch functions, the reference an engine
integration reuses and tests hold engines to.

A batch of occluded copies is built in a buffer of ``batch x C x (spatial)`` that is filled from the input and
then, window by window, gets the fill's values in that window's box: memory is one batch of copies (``batch x
volume``) and the input and fill once, never a mask per window (a boolean mask of a 512 x 512 x 300 volume is 79
MB a window) nor a copy of the whole volume per window beyond the batch. The buffer can be reused from batch to
batch (``out=``), so a run allocates it once; refilling it costs a copy of the batch per batch (0.8 s for 4 copies
of a 300 MB CT on 2 cores, against 0.23 s restoring only the previous windows' boxes, ``occluded=``: a
model's forward pass at that size takes far longer, and only the full refill is safe from a model that writes
into its input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, ImageError
from .grid import BandGrid, BandWindowGrid, Grid, VolumeGrid
from .scoring import log_probs, scores_of

SHARE = 0.25  # of the free memory, what a batch may take (the engines' fitting() rule)


def window_boxes(grid: Grid | VolumeGrid, indices) -> list[tuple[slice, ...]]:
    """The boxes of windows ``indices`` (raster order) as one slice per spatial axis."""
    spans = grid.spans()
    boxes = []
    for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist():
        index = np.unravel_index(i, grid.shape)
        boxes.append(tuple(slice(int(s[k]), int(e[k])) for (s, e), k in zip(spans, index, strict=True)))
    return boxes


def occluded_batch(
    x: torch.Tensor,
    fill: torch.Tensor,
    grid: Grid | VolumeGrid,
    indices,
    out: torch.Tensor | None = None,
    occluded=None,
) -> torch.Tensor:
    """``len(indices)`` occluded copies of ``x`` (C x H x W or C x D x H x W): copy ``j`` is ``x`` with window
    ``indices[j]``'s box (every channel) taken from ``fill`` (the same shape as ``x``).

    ``out``: a buffer of at least that many copies to write into (its first rows are returned), else a new one.
    ``occluded``: the windows a previous call left occluded in ``out``'s first rows (its ``indices``): only their
    boxes are restored from ``x`` (rows beyond them are copied whole), so a run that reuses one buffer moves
    window-sized boxes per batch instead of whole volumes."""
    boxes = window_boxes(grid, indices)
    if x.shape != fill.shape or tuple(x.shape[1:]) != tuple(grid.image_shape):
        raise ValueError(f"input {tuple(x.shape)} and fill {tuple(fill.shape)} do not match the grid's "
                         f"{tuple(grid.image_shape)}")  # fmt: skip
    n = len(boxes)
    if out is None:
        out, occluded = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device), None
    if out.shape[0] < n or tuple(out.shape[1:]) != tuple(x.shape):
        raise ValueError(f"a buffer of shape {tuple(out.shape)} cannot hold {n} copies of {tuple(x.shape)}")
    batch = out[:n]
    previous = [] if occluded is None else window_boxes(grid, occluded)[:n]
    where: tuple[int | slice, ...]  # copy j, every channel, the window's box (where[1:]: the box in x or fill)
    for j, box in enumerate(previous):
        where = (j, slice(None), *box)
        batch[where] = x[where[1:]]
    if len(previous) < n:
        rest = batch[len(previous) :]
        rest.copy_(x.expand_as(rest))
    for j, box in enumerate(boxes):
        where = (j, slice(None), *box)
        batch[where] = fill[where[1:]]
    return batch


def band_batch(x: torch.Tensor, fill: torch.Tensor, grid: BandGrid, indices, out: torch.Tensor | None = None):
    """``len(indices)`` copies of ``x`` (C x spatial) with band group ``indices[j]`` taken from ``fill`` in copy
    ``j``: every channel of the group, over the whole image or volume. ``out``: a buffer to write into, as
    :func:`occluded_batch`'s (refilled whole)."""
    groups = [grid.groups[i] for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist()]
    if x.shape != fill.shape or x.shape[0] != grid.channels:
        raise ValueError(f"input {tuple(x.shape)} and fill {tuple(fill.shape)} do not match {grid.channels} bands")
    n = len(groups)
    if out is None:
        out = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device)
    batch = out[:n]
    batch.copy_(x.expand_as(batch))
    for j, group in enumerate(groups):
        batch[j, list(group)] = fill[list(group)]
    return batch


def band_window_batch(x: torch.Tensor, fill: torch.Tensor, grid: BandWindowGrid, indices,
                      out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``len(indices)`` copies of ``x`` (C x H x W) with window ``indices[j]`` of band windows occluded in copy
    ``j``: its band group's channels taken from ``fill`` inside its 2-D window's box only. ``out``: a buffer to
    write into, as :func:`occluded_batch`'s (refilled whole)."""
    if x.shape != fill.shape or x.shape[0] != grid.channels or tuple(x.shape[1:]) != grid.image_shape:
        raise ValueError(f"input {tuple(x.shape)} and fill {tuple(fill.shape)} do not match {grid.channels} bands "
                         f"of {grid.image_shape}")  # fmt: skip
    group, at = np.divmod(np.asarray(indices, dtype=np.int64).reshape(-1), grid.space.size)
    boxes = window_boxes(grid.space, at)
    n = len(boxes)
    if out is None:
        out = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device)
    batch = out[:n]
    batch.copy_(x.expand_as(batch))
    where: tuple[Any, ...]  # copy j, the group's channels, the window's box (where[1:]: the same in fill)
    for j, (b, box) in enumerate(zip(group.tolist(), boxes, strict=True)):
        where = (j, list(grid.groups[b]), *box)
        batch[where] = fill[where[1:]]
    return batch


def check_fits(per_item_bytes: int, available: int, share: float = SHARE, what: str = "with its forward pass") -> None:
    """Refuse, in one line saying what it needs, an input of which even one occluded copy (``per_item_bytes``: the
    copy and its forward pass's peak) does not fit in ``share`` of the ``available`` bytes. The batch size itself
    is the engines' one rule (``occlens.engines.memory.fitting``: that share of free memory over the per-item
    bytes, at least 1), which alone would run such a volume anyway, one copy at a time, into the allocator."""
    if per_item_bytes > available * share:
        raise ImageError(
            f"one occluded copy of the input needs about {_mb(per_item_bytes)} {what}, more than "
            f"{share:.0%} of the {_mb(available)} free; crop or resample the volume, or use a device with more memory"
        )


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
    batch_size: int = 8,
    windows: Sequence[int] | None = None,
) -> tuple[np.ndarray, int | None]:
    """The seed's ``δL_i = L - L_occl_i = s(x_occl_i) - s(x)`` of each window, for an image (C x H x W, a
    :class:`Grid`) or a volume (C x D x H x W, a :class:`VolumeGrid`) in [0, 1] and a fill of the same shape.

    ``target``: a class index (``s = log P(y=target)`` of ``output``'s kind), None (the predicted class Q of the
    clean input), or a callable from the model's N-row output to N scores. Returns ``grid.shape`` float64 δL
    (negative: the window supported the target; only ``windows`` filled, the rest NaN, when given) and the class
    explained (None for a callable). ``batch_size``: copies per forward pass (memory: ``batch_size`` copies of
    ``x`` in one buffer, reused from batch to batch). Runs under ``torch.no_grad``; the model is called as it is
    (its mode is the caller's).
    """
    if x.ndim != len(grid.image_shape) + 1:
        raise ImageError(f"input of shape {tuple(x.shape)} does not fit a grid of {len(grid.image_shape)} axes")
    order = np.arange(grid.size) if windows is None else np.asarray(windows, dtype=np.int64).reshape(-1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", option="batch_size", value=batch_size)
    with torch.no_grad():
        clean = model(x[None])
        cls = None
        if callable(target):
            score = target
        else:
            cls = int(torch.argmax(log_probs(scores_of(clean, 1), output)[0])) if target is None else int(target)
            score = class_score(cls, output)
        base = float(torch.as_tensor(score(clean), dtype=torch.float64).reshape(-1)[0])
        delta = np.full(grid.size, np.nan)
        buffer = torch.empty((min(batch_size, len(order)), *x.shape), dtype=x.dtype, device=x.device)
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            # refilled whole: a model that writes into its input (x.sub_(mean) in its forward) cannot leak one
            # batch's edits into the next, as restoring only the boxes (occluded=) would let it
            batch = occluded_batch(x, fill, grid, part, out=buffer)
            got = torch.as_tensor(score(model(batch)), dtype=torch.float64).reshape(-1).cpu().numpy()
            delta[part] = got - base
    return delta.reshape(grid.shape), cls
