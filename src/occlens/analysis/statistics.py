"""Uncertainty over a set of images: a bootstrap interval of a mean, and a paired test of two methods.

- :func:`bootstrap_interval`: the percentile bootstrap (Efron): the images are resampled with
  replacement ``resamples`` times, and the interval holds the central ``level`` share of the resampled
  means.
- :func:`paired_test`: the sign-flip permutation test of the mean paired difference (the paired
  permutation test; Fisher's exact randomisation test). Under "the two methods are exchangeable on each
  image" every difference is as likely negated; the two-sided p-value is the share of sign patterns
  whose mean difference is at least as far from 0 as the observed one. Exact (all ``2^n`` patterns) for
  up to :data:`EXACT_UP_TO` images, else ``resamples`` random patterns, with the usual ``(1 + k) / (1 + B)``.
  With ``n`` images the smallest exact p is ``2 / 2^n``: 3 images can never give p < 0.25.

Both are seeded, so the same numbers give the same interval and p-value.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..core.errors import ConfigError

EXACT_UP_TO = 16  # images: 2^16 = 65,536 sign patterns
CHUNK = 1 << 20  # resampled values held at once


def check_resamples(resamples) -> int:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 0:
        raise ConfigError(f"bootstrap resamples must be an int >= 0 (0: no intervals), got {resamples!r}")
    return int(resamples)


def _values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ConfigError(f"no {name}: at least one image is needed")
    if not np.isfinite(v).all():
        raise ConfigError(f"{name} hold NaN or infinite entries; pass finite numbers")
    return v


def bootstrap_interval(values, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile-bootstrap ``level`` interval of the mean of ``values``; ``(nan, nan)`` for 0 resamples."""
    v = _values(values)
    resamples = check_resamples(resamples)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie strictly between 0 and 1, got {level!r}")
    if resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK // v.size)
    means = np.concatenate([
        v[rng.integers(0, v.size, size=(min(per_chunk, resamples - done), v.size))].mean(axis=1)
        for done in range(0, resamples, per_chunk)
    ])  # fmt: skip
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_test(a, b, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip test that ``mean(a - b)`` is 0 (``a[i]``, ``b[i]``: one image)."""
    a, b = _values(a, "first values"), _values(b, "second values")
    if a.size != b.size:
        raise ConfigError(f"a paired test needs one value of each method per image, got {a.size} and {b.size}")
    resamples = check_resamples(resamples)
    d = a - b
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # a pattern giving the observed mean counts
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d / d.size) >= observed - tolerance))
    if resamples == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK // d.size)
    extreme = 0
    for done in range(0, resamples, per_chunk):
        signs = rng.choice((1.0, -1.0), size=(min(per_chunk, resamples - done), d.size))
        extreme += int(np.sum(np.abs(signs @ d / d.size) >= observed - tolerance))
    return (1 + extreme) / (1 + resamples)
