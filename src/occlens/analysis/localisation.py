"""Where a map's negative δL lies: on the object, on the border, spread out; and against ground truth.

All on the pixel map ``M`` (H x W, the model's input geometry: the mean δL of the windows covering each
pixel) and, where ground truth exists, the object ``O`` (H x W, bool). The *negative mass* is
``m = max(-M, 0)``: how much each pixel's occlusion raised the loss, i.e. supported the class.

- ``inside``: ``sum(m·O) / sum(m)``, the share of the negative mass on the object (NaN when the map has
  no negative pixel). A map that ignores the object scores about the object's ``area`` share.
- ``border``: the share of the negative mass in the outer band of the image, :data:`BORDER` of the
  height (top and bottom) and of the width (left and right), at least one pixel each.
- ``spread``: the smallest share of the image's area holding half the negative mass (its largest pixels
  first): about 0 for a map on one small spot, 0.5 for mass spread evenly over the image.
- ``pointing``: the pointing game, on the windows: 1 when the centre pixel of the most negative window
  (the first in raster order on ties) lies on the object, else 0.
- ``iou``: the intersection over union of the thresholded map ``M <= THRESHOLD · min(M)`` (the pixels
  with at least half the strongest support; empty when no pixel is negative) with the object.

The pixel map of a grid is constant on *cells*: the rectangles between consecutive window edges (and the
border band's edges). :class:`Cells` computes every number above on those (at most 2R+2 x 2C+2 of them,
each weighted by its pixel count) instead of on the H x W pixels: the same numbers, exactly, at a fraction
of the cost (a 224 x 224 map with 27 x 27 windows has 56 x 56 cells instead of 50,176 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BORDER = 0.1  # the border band: 10% of the height at the top and the bottom, of the width at each side
THRESHOLD = 0.5  # iou: the pixels whose δL is at most half the map's minimum


def border_band(height: int, width: int, border: float = BORDER) -> np.ndarray:
    """H x W bool: the outer band of the image (see the module)."""
    bh, bw = _band(height, border), _band(width, border)
    band = np.zeros((height, width), dtype=bool)
    band[:bh], band[-bh:], band[:, :bw], band[:, -bw:] = True, True, True, True
    return band


def _band(size: int, border: float) -> int:
    return max(1, round(size * border))


def _cover(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """cells x windows: 1 where the window's span covers the cell (a cell lies wholly inside or outside)."""
    lo = edges[:-1]
    return ((lo[:, None] >= starts[None, :]) & (lo[:, None] < ends[None, :])).astype(np.float64)


@dataclass(frozen=True)
class Cells:
    """A grid geometry's cells: ``rows``/``cols`` their edges (pixels), ``areas`` their pixel counts, ``band``
    the pixels of each in the border band, and the matrices that give each cell's mean over its windows."""

    rows: np.ndarray
    cols: np.ndarray
    areas: np.ndarray
    band: np.ndarray
    cover_rows: np.ndarray  # cells' rows x window rows
    cover_cols: np.ndarray
    count: np.ndarray  # windows covering each cell
    centres: np.ndarray  # (R*C, 2): each window's centre pixel (row, column)

    @classmethod
    def of(cls, grid, border: float = BORDER) -> Cells:
        """The cells of ``grid`` (an :class:`occlens.Grid`)."""
        h, w = grid.height, grid.width
        (rs, re), (cs, ce) = grid.row_spans(), grid.col_spans()
        bh, bw = _band(h, border), _band(w, border)
        rows = np.unique(np.concatenate([rs, re, [0, h, min(bh, h), max(h - bh, 0)]]))
        cols = np.unique(np.concatenate([cs, ce, [0, w, min(bw, w), max(w - bw, 0)]]))
        heights, widths = np.diff(rows), np.diff(cols)
        in_rows = (rows[:-1] < bh) | (rows[:-1] >= h - bh)
        in_cols = (cols[:-1] < bw) | (cols[:-1] >= w - bw)
        areas = np.outer(heights, widths).astype(np.float64)
        band = np.where(in_rows[:, None] | in_cols[None, :], areas, 0.0)
        cover_rows, cover_cols = _cover(rs, re, rows), _cover(cs, ce, cols)
        count = np.outer(cover_rows.sum(1), cover_cols.sum(1))
        r, c = np.divmod(np.arange(grid.rows * grid.cols), grid.cols)
        centres = np.stack([(rs[r] + re[r] - 1) // 2, (cs[c] + ce[c] - 1) // 2], axis=1)
        return cls(rows, cols, areas, band, cover_rows, cover_cols, count, centres)

    def values(self, delta: np.ndarray) -> np.ndarray:
        """Each cell's value of the pixel map of ``delta`` (R x C): the mean over the windows covering it."""
        return self.cover_rows @ np.asarray(delta, dtype=np.float64) @ self.cover_cols.T / self.count

    def pixels(self, values: np.ndarray) -> np.ndarray:
        """The H x W pixel map of cell ``values`` (for checks and pictures)."""
        return np.repeat(np.repeat(values, np.diff(self.rows), 0), np.diff(self.cols), 1)

    def counted(self, mask: np.ndarray) -> np.ndarray:
        """The pixels of ``mask`` (H x W bool) in each cell."""
        m = np.asarray(mask, dtype=np.float64)
        return np.add.reduceat(np.add.reduceat(m, self.rows[:-1], axis=0), self.cols[:-1], axis=1)


def placement(cells: Cells, values: np.ndarray) -> dict[str, float]:
    """``border`` and ``spread`` of a map given as its cell ``values`` (NaN for a map with no negative pixel)."""
    m = np.maximum(-values, 0.0)
    mass = m * cells.areas
    total = mass.sum()
    if total <= 0:
        return {"border": math.nan, "spread": math.nan}
    order = np.argsort(-m, axis=None, kind="stable")
    flat_m, flat_area = m.ravel()[order], cells.areas.ravel()[order]
    cum = np.cumsum(flat_m * flat_area)
    target = 0.5 * total * (1 - 1e-12)
    i = min(int(np.searchsorted(cum, target)), len(cum) - 1)  # the cell where half the mass is reached
    before = cum[i - 1] if i else 0.0
    pixels = flat_area[:i].sum() + max(1, math.ceil((target - before) / flat_m[i] - 1e-9))
    every = cells.areas.sum()
    return {"border": float((m * cells.band).sum() / total), "spread": float(min(pixels, every) / every)}


def localisation(cells: Cells, values: np.ndarray, delta: np.ndarray, obj: np.ndarray,
                 threshold: float = THRESHOLD) -> dict[str, float]:  # fmt: skip
    """``inside``, ``pointing``, ``iou`` and the object's ``area`` share for one image (see the module): ``values``
    the map's cell values, ``delta`` its R x C grid, ``obj`` the object (H x W bool)."""
    obj = np.asarray(obj, dtype=bool)
    inside_px = cells.counted(obj)
    m = np.maximum(-values, 0.0)
    total = (m * cells.areas).sum()
    inside = float((m * inside_px).sum() / total) if total > 0 else math.nan
    row, col = cells.centres[int(np.argmin(np.asarray(delta).ravel()))]
    pointing = float(obj[row, col])
    low = values.min()
    chosen = values <= threshold * low if low < 0 else np.zeros(values.shape, dtype=bool)
    overlap, size, area = inside_px[chosen].sum(), cells.areas[chosen].sum(), float(obj.sum())
    union = size + area - overlap
    iou = float(overlap / union) if union else math.nan
    return {"inside": inside, "pointing": pointing, "iou": iou, "area": area / obj.size}


def boxes_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """H x W bool: the pixels whose centres lie in any of ``boxes`` ``(x0, y0, x1, y1)`` (pixel coordinates
    of the model's input, x to the right, y down, the image from 0 to W and 0 to H; x1, y1 exclusive)."""
    out = np.zeros((height, width), dtype=bool)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    for x0, y0, x1, y1 in boxes:
        out |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return out


def mean_interval(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite ``values``: the mean and its percentile-bootstrap 95% interval
    (:func:`occlens.analysis.statistics.bootstrap_interval`); NaN for none."""
    from .statistics import bootstrap_interval

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    low, high = bootstrap_interval(v, resamples=resamples, seed=seed) if resamples else (math.nan, math.nan)
    return float(v.mean()), low, high, int(v.size)
