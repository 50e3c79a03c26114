"""The dense engine: stream batches of occluded copies through the model.

Each batch is built on the model's device in one vectorised ``torch.where`` from
the image, the fill image and the windows' row/column masks, so memory holds one
batch at a time, never all R*C occluded copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..core.errors import ModelError
from ..core.grid import Grid
from ..core.scoring import log_probs, scores_of
from ..models.forward import Forward, call_model
from .memory import in_batches

Progress = Callable[[int, int], None]


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


def _span(order: torch.Tensor, start: int, stop: int) -> str:
    """``windows A..B`` for the batch ``order[start:stop]`` (for messages)."""
    return f"windows {int(order[start])}..{int(order[stop - 1])}"


def _windows(scores: torch.Tensor | None, order: torch.Tensor, start: int, stop: int) -> str:
    """The windows whose scores are not finite, else the batch's span (for error messages)."""
    if scores is None:
        return _span(order, start, stop)
    rows = torch.nonzero(~torch.isfinite(scores.detach().cpu()).all(dim=1)).flatten()
    bad = order[start:stop].cpu()[rows].tolist()
    return f"window(s) {bad[:5]}" if bad else _span(order, start, stop)


def occluded_log_probs(
    forward: Forward,
    image: torch.Tensor,
    fill_image: torch.Tensor,
    grid: Grid,
    classes: Sequence[int],
    output: str,
    batch_size: int,
    progress: Progress | None = None,
    windows: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``log P(y=k | x_occl_i)`` for each class ``k`` in ``classes`` and each window ``i``.

    ``image`` and ``fill_image`` are C x H x W on the model's device and dtype.
    ``windows``: raster indices of the windows to score (default: all of them).
    Returns a float64 array of shape ``(len(classes), len(windows))`` and the batch size
    used: on CUDA out-of-memory the batch size is halved and the batch retried.
    """
    device = image.device
    order = torch.arange(grid.size) if windows is None else torch.as_tensor(np.asarray(windows, dtype=np.int64))
    order = order.to(device)
    n = len(order)
    out = np.empty((len(classes), n), dtype=np.float64)
    x, fill = image[None], fill_image[None]

    def step(start: int, stop: int) -> None:
        masks = window_masks(grid, order[start:stop], device)
        raw = call_model(forward, torch.where(masks, fill, x), _span(order, start, stop))
        scores = None
        try:
            scores = scores_of(raw, stop - start)
            logp = log_probs(scores, output, classes)
        except ModelError as err:
            raise ModelError(f"on the occluded images of {_windows(scores, order, start, stop)}: {err}") from None
        out[:, start:stop] = logp.T.numpy()
        if progress is not None:
            progress(stop, n)

    return out, in_batches(n, batch_size, device, "image", step)
