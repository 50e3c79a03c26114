"""The approximate mode (``fast=True``): adaptive drill-down, after Krypton (Nakandala et al., SIGMOD 2019).

1. A first pass scores a lattice of windows: every ``factor``-th window row and column (and
   the last ones, so the edges are measured) and, for an even ``factor``, the centre of every
   lattice cell. At ``factor=2`` that is a checkerboard: every window it leaves has its four
   neighbours scored.
2. Then passes of ``step`` x (all windows) each score the windows whose scored neighbours
   (the 3 x 3 around them) disagree most (largest max - min ``δL``) and matter most (largest
   ``|δL|``): where interpolating would be worst. Before scoring them, the pass interpolates
   them; it stops once a pass finds them, on average, within ``tolerance`` of the range of
   ``δL`` scored so far -- a smooth map stops early, a rough one goes on -- or once ``most`` of
   the windows the first pass left are scored.
3. Every window not scored gets the harmonic interpolation of the scored ones (the mean of its
   four neighbours; on the checkerboard, of four scored windows).

Volumes (a :class:`~occlens.core.grid.VolumeGrid`, ``Dw x R x C`` windows in raster order depth -> rows -> columns)
take the same steps on three axes: the lattice steps planes too and its cells' centres are the cubes' centres (at
``factor=2`` a quarter of the windows: every other window on every axis, and the windows between them diagonally),
neighbourhoods are 3 x 3 x 3, the harmonic interpolation is the mean of six neighbours, and a later pass scores
whole batches of the exact engine's (passes of a few 3-D copies each waste a CPU's batches: a DenseNet121's fast
map of 64 windows at 48³ took longer than its exact map in batches of 16). On a 2-D grid every step is the same
arithmetic as before, to the bit.

Every scored window goes through an exact engine (dense or incremental); only the windows
that were not scored are approximate. :func:`occlens.analysis.similarity.ssim` and
:func:`~occlens.analysis.similarity.spearman` measure how close an approximate map is to the exact one.

Why a checkerboard, and not a coarse grid plus its cells (this module before commit 61b05d5): the
maps are rough at the window stride, so interpolating across two strides loses much of them. On the
bundled photos (EfficientNet-Lite0, window 16; ``benchmarks/incremental_speed.py --skip-exact
--stride S``) the checkerboard and the stopping rule kept SSIM >= 0.926 at strides 6, 8, 12 and 16,
scoring 53-76 % of the windows; the coarse grid and the top 35 % of its cells reached 0.909 at
stride 8 scoring 57 %, and 0.880 at strides 12 and 16.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ConfigError
from ..core.grid import Grid, VolumeGrid
from .dense import Progress

FACTOR = 2  # the first pass's lattice steps this many windows
STEP = 0.03  # each later pass scores this share of all windows ...
TOLERANCE = 0.09  # ... until one finds them this close (share of the δL range) to their interpolation ...
MOST = 0.5  # ... or this share of the windows the first pass left is scored
MAX_ITERATIONS = 10_000  # of the harmonic interpolation (a checkerboard needs one)
COARSE = 4  # the anytime map's first lattice (``budget``): every 4th window row and column, and the centres
SAFETY = 0.9  # an anytime chunk is sized to end by this share of the time left


@dataclass(frozen=True)
class Drilldown:
    """How sparse the first pass is, and how the later passes add windows where interpolation would be worst."""

    factor: int = FACTOR
    step: float = STEP
    tolerance: float = TOLERANCE
    most: float = MOST

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ConfigError(f"drill-down factor must be a positive int, got {self.factor!r}")
        for name in ("step", "tolerance", "most"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"drill-down {name} must lie in [0, 1], got {getattr(self, name)!r}")


def coarse_axis(count: int, factor: int) -> np.ndarray:
    """Every ``factor``-th index of ``count``, and the last one."""
    return np.unique(np.append(np.arange(0, count, factor), count - 1))


def first_windows(grid: Grid | VolumeGrid, factor: int = FACTOR) -> np.ndarray:
    """Raster indices of the first pass: the ``factor`` lattice (last row and column, and plane, included) and,
    for an even ``factor``, its cells' centres."""
    chosen = np.zeros(grid.shape, dtype=bool)
    chosen[np.ix_(*(coarse_axis(n, factor) for n in grid.shape))] = True
    if factor % 2 == 0:
        chosen[tuple(slice(factor // 2, None, factor) for _ in grid.shape)] = True
    return np.flatnonzero(chosen)


def disagreement(delta: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per window, how badly interpolation could miss it: the spread (max - min) of the scored
    ``delta`` in its 3 x 3 (a volume's: 3 x 3 x 3) neighbourhood plus their largest ``|delta|``; -inf where
    none is scored.

    ``delta``, ``known``: R x C (or Dw x R x C); ``delta`` is read only where ``known``.
    """
    pad = lambda a, v: np.pad(a, 1, constant_values=v)  # noqa: E731
    d, k = pad(np.where(known, delta, 0.0), 0.0), pad(known, False)
    shifts = [tuple(slice(o, o + n) for o, n in zip(at, delta.shape, strict=True))
              for at in itertools.product(range(3), repeat=delta.ndim)]  # fmt: skip
    near = [(d[s], k[s]) for s in shifts]
    high = np.max([np.where(m, v, -np.inf) for v, m in near], axis=0)
    low = np.min([np.where(m, v, np.inf) for v, m in near], axis=0)
    largest = np.max([np.where(m, np.abs(v), -np.inf) for v, m in near], axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(high), high - low + largest, -np.inf)


def interpolate(values: np.ndarray, known: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """``K x R x C`` (or ``K x Dw x R x C``) maps with the windows not ``known`` (R x C, or Dw x R x C) filled in
    harmonically.

    Each unknown window becomes the mean of its four (a volume's: six) neighbours (a neighbour beyond the edge
    counts as the window itself): Jacobi iteration from the known windows' mean until no window
    moves by more than ``tolerance`` times the known values' range.
    """
    out = np.array(values, dtype=np.float64)
    if known.all() or not known.any():
        return out
    unknown = ~known
    out[:, unknown] = out[:, known].mean(axis=1, keepdims=True)
    span = float(np.ptp(out[:, known])) or 1.0
    inner = tuple(slice(1, 1 + n) for n in known.shape)
    sides = [(slice(None), *inner[:a], slice(lo, lo + n), *inner[a + 1 :])
             for a, n in enumerate(known.shape) for lo in (0, 2)]  # fmt: skip  # each axis: before, after
    for _ in range(MAX_ITERATIONS):
        p = np.pad(out, ((0, 0), *((1, 1),) * known.ndim), mode="edge")
        total = p[sides[0]]
        for side in sides[1:]:  # summed in the order of the 2-D formula: up, down, left, right
            total = total + p[side]
        mean = total / len(sides)
        step = np.abs(mean[:, unknown] - out[:, unknown]).max()
        out[:, unknown] = mean[:, unknown]
        if step <= tolerance * span:
            break
    return out


Score = Callable[[np.ndarray, Progress | None], np.ndarray]  # exact scores of raster windows


def drill_down(
    score: Score,
    grid: Grid | VolumeGrid,
    clean: Sequence[float],
    plan: Drilldown = Drilldown(),
    progress: Progress | None = None,
    batch: int = 1,
) -> tuple[np.ndarray, int]:
    """Approximate ``K x R*C`` (a volume's ``K x Dw*R*C``) occluded scores and the number of windows scored
    exactly.

    ``score(windows, progress)``: exact ``K x len(windows)`` scores of raster
    ``windows``; ``clean``: the K clean scores (the first class's ``δL`` steers
    the drill-down). ``progress(done, total)``: ``total`` counts the windows of the passes so
    far (how many more passes run is not known in advance). ``batch``: a later pass scores whole batches of this
    many windows (a volume's: a part batch of 3-D copies costs nearly a whole one on a CPU); 1 on a 2-D grid.
    """
    first = first_windows(grid, plan.factor)
    budget = int(round(plan.most * (grid.size - len(first))))
    per_pass = -(-max(1, int(round(plan.step * grid.size))) // batch) * batch  # rounded up to whole batches
    out = np.zeros((len(clean), grid.size))
    known = np.zeros(grid.size, dtype=bool)
    shape = (len(clean), *grid.shape)

    def scored(windows: np.ndarray, total: int) -> None:
        offset = int(known.sum())
        out[:, windows] = score(windows, None if progress is None else lambda d, _: progress(offset + d, total))
        known[windows] = True

    scored(first, len(first))
    while budget > 0:
        n = min(per_pass, budget)
        grid_known = known.reshape(grid.shape)
        key = disagreement((out[0] - clean[0]).reshape(grid.shape), grid_known).ravel()
        candidates = np.flatnonzero(~known)
        windows = np.sort(candidates[np.argsort(-key[candidates], kind="stable")[:n]])
        guess = interpolate(out[:1].reshape(1, *grid.shape), grid_known).reshape(-1)[windows]
        span = float(np.ptp(out[0, known])) or 1.0
        budget -= n
        scored(windows, int(known.sum()) + n)
        if np.abs(out[0, windows] - guess).mean() <= plan.tolerance * span:
            break
    done = int(known.sum())
    if progress is not None:
        progress(done, done)
    return interpolate(out.reshape(shape), known.reshape(grid.shape)).reshape(len(clean), -1), done


def anytime(
    score: Score,
    grid: Grid | VolumeGrid,
    clean: Sequence[float],
    deadline: float,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[np.ndarray, int]:
    """The best ``K x R*C`` (``K x Dw*R*C``) occluded scores reached by ``deadline`` (a ``clock()`` time), and
    the number of windows scored exactly: the map of ``budget=SECONDS``, coarse to fine.

    The first pass scores the :data:`COARSE` lattice and its cells' centres (about an eighth of the
    windows; of a volume's, about a thirtieth) whatever the deadline. Then chunks of the others, the
    checkerboard's first and each by :func:`disagreement` (recomputed per chunk), each sized from the time per window
    measured so far to end by the deadline, half the windows left at most; windows never scored
    are interpolated. A deadline far enough away scores every window: the exact map.
    """
    out = np.zeros((len(clean), grid.size))
    known = np.zeros(grid.size, dtype=bool)
    checker = np.zeros(grid.size, dtype=bool)
    checker[first_windows(grid, 2)] = True
    smallest = max(1, int(round(STEP * grid.size)))
    spent = 0.0

    def scored(windows: np.ndarray) -> None:
        nonlocal spent
        offset, start = int(known.sum()), clock()
        out[:, windows] = score(windows, None if progress is None else lambda d, _: progress(offset + d, grid.size))
        spent += clock() - start
        known[windows] = True

    scored(first_windows(grid, COARSE))
    while not known.all():
        candidates = np.flatnonzero(~known)
        fits = int(SAFETY * (deadline - clock()) * known.sum() / max(spent, 1e-9))
        n = min(fits, max(smallest, len(candidates) // 2), len(candidates))
        if n < 1:
            break
        key = disagreement((out[0] - clean[0]).reshape(grid.shape), known.reshape(grid.shape))
        order = np.lexsort((-key.ravel()[candidates], ~checker[candidates]))  # checkerboard first, worst first
        scored(np.sort(candidates[order[:n]]))
    done = int(known.sum())
    if progress is not None:
        progress(done, grid.size)
    maps = interpolate(out.reshape(len(clean), *grid.shape), known.reshape(grid.shape))
    return maps.reshape(len(clean), -1), done


@dataclass(frozen=True, eq=False)
class Approximate:
    """The drill-down engine: an exact engine (:class:`~occlens.engines.protocol.OcclusionEngine`) run on the
    windows that matter, the others interpolated; ``deadline`` (a ``time.perf_counter()`` time): the anytime
    map reached by then (:func:`anytime`), else the drill-down's own stopping rule (:func:`drill_down`).
    ``clean``: the clean scores (the first one's δL steers). :attr:`notes` says how many windows were scored."""

    exact: object  # an OcclusionEngine
    grid: Grid | VolumeGrid
    clean: Sequence[float]
    deadline: float | None = None
    notes: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{'drilldown' if self.deadline is None else 'anytime'}+{self.exact.name}"

    @property
    def batch_size(self) -> int:
        return self.exact.batch_size

    def occluded_scores(self, image, fill_image, score, progress: Progress | None = None, windows=None):
        """All windows' scores, approximately (``windows`` must be None: the drill-down picks them)."""
        sizes = [self.exact.batch_size]

        def exact(chosen: np.ndarray, report):
            out, size = self.exact.occluded_scores(image, fill_image, score, report, chosen)
            sizes.append(size)
            return out

        if self.deadline is not None:
            out, scored = anytime(exact, self.grid, self.clean, self.deadline, progress)
            self.notes["anytime"] = {"scored": scored, "windows": self.grid.size, "complete": scored == self.grid.size}
        else:
            whole = self.exact.batch_size if isinstance(self.grid, VolumeGrid) else 1  # 2-D: passes as they were
            out, scored = drill_down(exact, self.grid, self.clean, progress=progress, batch=whole)
            self.notes["drilldown"] = {"scored": scored, "windows": self.grid.size}
        return out, sizes[-1]
