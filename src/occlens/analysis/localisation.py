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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BORDER = 0.1  # the border band: 10% of the height at the top and the bottom, of the width at each side
THRESHOLD = 0.5  # iou: the pixels whose δL is at most half the map's minimum


def negative_mass(pixels: np.ndarray) -> np.ndarray:
    return np.maximum(-np.asarray(pixels, dtype=np.float64), 0.0)


def border_band(height: int, width: int, border: float = BORDER) -> np.ndarray:
    """H x W bool: the outer band of the image (see the module)."""
    bh, bw = max(1, round(height * border)), max(1, round(width * border))
    band = np.zeros((height, width), dtype=bool)
    band[:bh], band[-bh:], band[:, :bw], band[:, -bw:] = True, True, True, True
    return band


def placement(pixels: np.ndarray, border: float = BORDER) -> dict[str, float]:
    """``border`` and ``spread`` of a pixel map (NaN for a map with no negative pixel)."""
    m = negative_mass(pixels)
    total = m.sum()
    if total <= 0:
        return {"border": math.nan, "spread": math.nan}
    band = border_band(*m.shape, border)
    ordered = np.sort(m.ravel())[::-1]
    half = int(np.searchsorted(np.cumsum(ordered), 0.5 * total - 1e-12 * total)) + 1
    return {"border": float(m[band].sum() / total), "spread": half / m.size}


def localisation(pixels: np.ndarray, windows: np.ndarray, grid_values: np.ndarray, obj: np.ndarray,
                 threshold: float = THRESHOLD) -> dict[str, float]:  # fmt: skip
    """``inside``, ``pointing``, ``iou`` and the object's ``area`` share for one image (see the module).

    ``pixels``: the pixel map (H x W); ``windows``: (R*C, 4) ``(top, bottom, left, right)`` in raster order
    (:meth:`occlens.Grid.windows`); ``grid_values``: the R x C δL; ``obj``: H x W bool."""
    pixels = np.asarray(pixels, dtype=np.float64)
    obj = np.asarray(obj, dtype=bool)
    if obj.shape != pixels.shape:
        raise ValueError(f"object mask {obj.shape} and map {pixels.shape} differ in shape")
    m = negative_mass(pixels)
    total = m.sum()
    inside = float((m * obj).sum() / total) if total > 0 else math.nan
    top, bottom, left, right = np.asarray(windows)[int(np.argmin(np.asarray(grid_values).ravel()))]
    pointing = float(obj[(top + bottom - 1) // 2, (left + right - 1) // 2])
    low = pixels.min()
    chosen = pixels <= threshold * low if low < 0 else np.zeros_like(obj)
    union = np.sum(chosen | obj)
    iou = float(np.sum(chosen & obj) / union) if union else math.nan
    return {"inside": inside, "pointing": pointing, "iou": iou, "area": float(obj.mean())}


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
