"""How alike two maps are: rank correlation (one Spearman for the whole package) and structural similarity.

Used to compare an approximate map with the exact one (``fast=True``), maps of two precisions, and
the randomisation check's maps (:func:`occlens.metrics.randomization_check`).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import ConfigError


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally shaped arrays (average ranks for ties); NaN if one is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError(f"maps to correlate must have the same size, got {a.size} and {b.size} values")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a flat array; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]  # where each run of equal values starts
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(new) - 1]
    return ranks


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size x size`` (a volume's: ``size x size x size``) window that fits ("valid" positions)."""
    if a.ndim == 2:
        c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return (c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]) / size**2
    c = np.pad(a, ((1, 0),) * a.ndim)
    for axis in range(a.ndim):  # a running sum along each axis, then its differences ``size`` apart
        c = c.cumsum(axis)
    for axis in range(a.ndim):
        c = np.take(c, np.arange(size, c.shape[axis]), axis) - np.take(c, np.arange(c.shape[axis] - size), axis)
    return c / size**a.ndim


def ssim(exact: np.ndarray, approx: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity of an approximate map to the exact one, as heat-map images (2-D), or of two
    volumes' maps (3-D: ``window x window x window`` statistics, as ``structural_similarity`` of 3-D arrays).

    Both maps are scaled to [0, 1] by the exact map's minimum and maximum (δL has both
    signs, and SSIM's luminance term is meant for intensities), then compared as scikit-image's
    ``structural_similarity`` does by default: uniform ``window x window`` statistics with the
    sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, ``data_range = 1``, averaged over the
    windows that fit.
    """
    x, y = np.asarray(exact, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    if x.shape != y.shape or x.ndim not in (2, 3) or min(x.shape) < window:
        raise ConfigError(f"ssim needs two equal 2-D maps of at least {window}x{window} (or 3-D maps of at least "
                          f"{window}x{window}x{window}), got {x.shape}, {y.shape}")  # fmt: skip
    low, span = float(x.min()), float(x.max() - x.min())
    span = span if span > 0 else 1.0
    x, y = (x - low) / span, (y - low) / span
    n = window**x.ndim
    cov = n / (n - 1)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = cov * (_box_mean(x * x, window) - mx * mx)
    vy = cov * (_box_mean(y * y, window) - my * my)
    vxy = cov * (_box_mean(x * y, window) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
