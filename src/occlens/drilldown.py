"""The approximate mode (``fast=True``): adaptive drill-down, after Krypton (Nakandala et al., SIGMOD 2019).

1. A coarse pass scores every ``factor``-th window row and column (and the last ones, so the
   edges are measured): the map at ``factor`` times the stride.
2. The coarse map is interpolated (bilinear) to the full R x C grid of windows.
3. The coarse map's cells (the windows between four neighbouring coarse windows) are ranked
   by the largest ``|δL|`` at their corners; in the top ``share`` of them every window is
   scored exactly and replaces the interpolation.

Every scored window goes through an exact engine (dense or incremental); only the windows
that were not scored are approximate. :func:`ssim` and :func:`spearman` measure how close an
approximate map is to the exact one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .engine import Progress
from .errors import ConfigError
from .grid import Grid

FACTOR = 2  # the coarse pass steps this many windows
SHARE = 0.35  # drill down in this share of the coarse map's cells


@dataclass(frozen=True)
class Drilldown:
    """How coarse the first pass is and how much of it is refined."""

    factor: int = FACTOR
    share: float = SHARE

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ConfigError(f"drill-down factor must be a positive int, got {self.factor!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"drill-down share must lie in [0, 1], got {self.share!r}")


def coarse_axis(count: int, factor: int) -> np.ndarray:
    """Every ``factor``-th index of ``count``, and the last one."""
    return np.unique(np.append(np.arange(0, count, factor), count - 1))


def interpolate(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: Grid) -> np.ndarray:
    """``K x len(rows)*len(cols)`` values at window rows x cols, bilinearly interpolated to ``K x R*C``."""
    v = values.reshape(len(values), len(rows), len(cols))
    r, c = np.arange(grid.rows), np.arange(grid.cols)
    along_cols = np.apply_along_axis(lambda a: np.interp(c, cols, a), 2, v)  # K x len(rows) x C
    full = np.apply_along_axis(lambda a: np.interp(r, rows, a), 1, along_cols)  # K x R x C
    return full.reshape(len(values), grid.size)


def refine_windows(delta: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: Grid, plan: Drilldown) -> np.ndarray:
    """Raster indices of the not yet scored windows in the cells whose corners have the largest ``|delta|``.

    A cell spans two neighbouring coarse rows and two neighbouring coarse columns (one, if
    there is only one); ``delta`` holds the coarse windows' values, rows x cols.
    """
    d = np.abs(delta).reshape(len(rows), len(cols))

    def ends(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.arange(len(axis))
        return (i[:-1], i[1:]) if len(axis) > 1 else (i, i)

    (r0, r1), (c0, c1) = ends(rows), ends(cols)
    corners = np.maximum.reduce([d[np.ix_(r0, c0)], d[np.ix_(r0, c1)], d[np.ix_(r1, c0)], d[np.ix_(r1, c1)]])
    chosen = np.zeros((grid.rows, grid.cols), dtype=bool)
    for cell in np.argsort(-corners, axis=None, kind="stable")[: int(np.ceil(plan.share * corners.size))]:
        i, j = divmod(int(cell), corners.shape[1])
        chosen[rows[r0[i]] : rows[r1[i]] + 1, cols[c0[j]] : cols[c1[j]] + 1] = True
    chosen[np.ix_(rows, cols)] = False
    return np.flatnonzero(chosen)


Score = Callable[[np.ndarray, Progress | None], np.ndarray]


def occluded_log_probs(
    score: Score, grid: Grid, clean: Sequence[float], plan: Drilldown = Drilldown(), progress: Progress | None = None
) -> tuple[np.ndarray, int]:
    """Approximate ``K x R*C`` occluded log-probabilities and the number of windows scored exactly.

    ``score(windows, progress)``: exact ``K x len(windows)`` log-probabilities of raster
    ``windows``; ``clean``: the K clean log-probabilities (the first class's ``|δL|`` steers
    the drill-down).
    """
    rows, cols = coarse_axis(grid.rows, plan.factor), coarse_axis(grid.cols, plan.factor)
    coarse = (rows[:, None] * grid.cols + cols[None, :]).ravel()
    expected = len(coarse) + int(plan.share * (grid.size - len(coarse)))
    first = score(coarse, None if progress is None else lambda d, _: progress(d, expected))
    out = interpolate(first, rows, cols, grid)
    out[:, coarse] = first
    fine = refine_windows(first[0] - clean[0], rows, cols, grid, plan)
    total = len(coarse) + len(fine)
    if len(fine):
        out[:, fine] = score(fine, None if progress is None else lambda d, _: progress(len(coarse) + d, total))
    if progress is not None:
        progress(total, total)
    return out, total


# ---------------------------------------------------------------------------------------------
# how close an approximate map is to the exact one


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size x size`` window that fits ("valid" positions)."""
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]) / size**2


def ssim(exact: np.ndarray, approx: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity of an approximate map to the exact one, as heat-map images.

    Both maps are scaled to [0, 1] by the exact map's minimum and maximum (δL has both
    signs, and SSIM's luminance term is meant for intensities), then compared as scikit-image's
    ``structural_similarity`` does by default: uniform ``window x window`` statistics with the
    sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, ``data_range = 1``, averaged over the
    windows that fit.
    """
    x, y = np.asarray(exact, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or min(x.shape) < window:
        raise ConfigError(f"ssim needs two equal 2-D maps of at least {window}x{window}, got {x.shape}, {y.shape}")
    low, span = float(x.min()), float(x.max() - x.min())
    span = span if span > 0 else 1.0
    x, y = (x - low) / span, (y - low) / span
    n = window**2
    cov = n / (n - 1)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = cov * (_box_mean(x * x, window) - mx * mx)
    vy = cov * (_box_mean(y * y, window) - my * my)
    vxy = cov * (_box_mean(x * y, window) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties sharing their mean rank."""
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    mean_rank = (starts + ends - 1) / 2.0
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened), ties at their mean rank."""
    ra, rb = _ranks(np.ravel(a).astype(np.float64)), _ranks(np.ravel(b).astype(np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0
