"""The dense engine: stream batches of occluded copies through the model.

Each batch is built on the model's device in one vectorised ``torch.where`` from
the image, the fill image and the windows' row/column masks, so memory holds one
batch at a time, never all R*C occluded copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.grid import Grid
from ..core.progress import Progress  # the engines' progress(done, total)
from ..core.scoring import model_output
from ..core.targets import Score
from ..models.forward import Forward, call_model
from .memory import in_batches


def window_masks(grid: Grid, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """B x 1 x H x W boolean masks of the windows ``indices`` (raster order), built in one shot."""
    (rs, re), (cs, ce) = grid.row_spans(), grid.col_spans()
    r, c = indices // grid.cols, indices % grid.cols
    as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    h = torch.arange(grid.height, device=device)
    w = torch.arange(grid.width, device=device)
    rows = (h >= as_t(rs)[r, None]) & (h < as_t(re)[r, None])  # B x H
    cols = (w >= as_t(cs)[c, None]) & (w < as_t(ce)[c, None])  # B x W
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _span(owner: torch.Tensor | None, order: torch.Tensor, start: int, stop: int) -> str:
    """``windows A..B`` for the batch ``order[start:stop]`` (for messages), with the images it spans
    when the batch holds windows of several (``owner``: the image of each entry of ``order``)."""
    text = f"windows {int(order[start])}..{int(order[stop - 1])}"
    if owner is None:
        return text
    first, last = int(owner[start]), int(owner[stop - 1])
    return text + (f" of image {first}" if first == last else f" of images {first}..{last}")


def _windows(raw, owner, order: torch.Tensor, start: int, stop: int) -> str:
    """The windows whose outputs are not finite, else the batch's span (for error messages)."""
    if not isinstance(raw, torch.Tensor) or raw.ndim < 1 or raw.shape[0] != stop - start:
        return _span(owner, order, start, stop)
    rows = torch.nonzero(~torch.isfinite(raw.detach().cpu().reshape(stop - start, -1)).all(dim=1)).flatten()
    bad = order[start:stop].cpu()[rows].tolist()
    if not bad:
        return _span(owner, order, start, stop)
    where = "" if owner is None else f" of image(s) {sorted(set(owner[start:stop].cpu()[rows].tolist()))[:5]}"
    return f"window(s) {bad[:5]}{where}"


@dataclass(frozen=True)
class Dense:
    """The dense engine: every occluded copy through the model, in batches of ``batch_size``."""

    forward: Forward
    grid: Grid
    batch_size: int
    name: str = "dense"

    def occluded_scores(
        self,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        score: Score,
        progress: Progress | None = None,
        windows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """``score`` of each occluded copy: T x len(windows) float64 (all windows, or ``windows``, raster
        indices), and the batch size used: on CUDA out-of-memory the batch size is halved and the batch retried.
        ``image`` and ``fill_image`` are C x H x W on the model's device and dtype."""
        out, size = together(self.forward, [image], [fill_image], self.grid, [score], self.batch_size, progress,
                             windows)  # fmt: skip
        return out[0], size


def together(
    forward: Forward,
    images: Sequence[torch.Tensor],
    fill_images: Sequence[torch.Tensor],
    grid: Grid,
    scores: Sequence[Score],
    batch_size: int,
    progress: Progress | None = None,
    windows: np.ndarray | None = None,
    numbers: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], int]:
    """:meth:`Dense.occluded_scores` of several images of one shape, whose windows stream through the model
    together: one image's last windows and the next one's first share a batch, so images with fewer
    windows than ``batch_size`` still fill the model's batches. ``scores``: each image's score (its target's
    and its true classes'); ``numbers``: what error messages call each image (default: its position in ``images``).

    Returns one ``T_j x len(windows)`` array per image and the batch size used.
    """
    device = images[0].device
    order = torch.arange(grid.size) if windows is None else torch.as_tensor(np.asarray(windows, dtype=np.int64))
    per = len(order)
    owner = torch.arange(len(images), device=device).repeat_interleave(per)
    order = order.to(device).repeat(len(images))
    n = len(order)
    outs: list[np.ndarray | None] = [None] * len(images)
    x, fill = torch.stack(list(images)), torch.stack(list(fill_images))  # one image: 1 x C x H x W, broadcast
    named = None  # say which image only when there are several
    if len(images) > 1:
        named = torch.as_tensor(list(range(len(images)) if numbers is None else numbers)).repeat_interleave(per)

    def step(start: int, stop: int) -> None:
        masks = window_masks(grid, order[start:stop], device)
        mine = owner[start:stop]
        batch = torch.where(masks, fill, x) if named is None else torch.where(masks, fill[mine], x[mine])
        raw = call_model(forward, batch, _span(named, order, start, stop))
        try:
            raw = model_output(raw, stop - start)
            for j in range(int(mine[0]), int(mine[-1]) + 1):  # the images this batch holds windows of
                first, last = max(start, j * per), min(stop, (j + 1) * per)  # positions in the stream
                rows = raw if last - first == stop - start else raw[first - start : last - start]
                got = np.asarray(scores[j](rows, last - first), dtype=np.float64).T  # T x windows
                if outs[j] is None:
                    outs[j] = np.empty((got.shape[0], per), dtype=np.float64)
                outs[j][:, first - j * per : last - j * per] = got
        except ModelError as err:
            raise ModelError(f"on the occluded images of {_windows(raw, named, order, start, stop)}: {err}") from None
        if progress is not None:
            progress(stop, n)

    size = in_batches(n, batch_size, device, "image", step)
    return [np.empty((0, per)) if o is None else o for o in outs], size
