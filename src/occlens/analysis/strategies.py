"""Strategies: the maps of one class clustered, as in SpRAy (Lapuschkin et al., Nat. Commun. 2019).

Each map (an R x C grid of δL) becomes a *feature*: its negative part (what supported the class, where the model
looked), area-averaged down to at most :data:`SIDE` x :data:`SIDE` cells, blurred by a Gaussian of :data:`BLUR`
cells (so that the same strategy on an object shifted by a window stays alike) and scaled to unit sum, so that two
images are alike when the model leaned on the same places, whatever the strength of the evidence. A map with no
negative window has the zero feature.

Clustering (:func:`spectral_clusters`) is spectral (Ng, Jordan & Weiss 2001) on a k-nearest-neighbour graph (k
about log2 n) whose Gaussian weights are self-tuned (Zelnik-Manor & Perona 2004: each image's scale is its distance
to its k-th neighbour, here at least the class's median of those). The number of clusters is the eigengap's: the
eigenvalues of the graph's normalised Laplacian in ascending order, the count before the largest gap among the
first :data:`MOST_CLUSTERS` + 1 (a graph of n nearly separate groups has n eigenvalues near 0, then a jump). The
rows of the first eigenvectors, scaled to unit length, are grouped by k-means (k-means++ starts, seeded); then
clusters whose mean features are alike (cosine at least :data:`ALIKE`) are merged, the most alike first: the
eigengap splits even one homogeneous group somewhere, and a split that does not change where the model looks is no
other strategy. A class with more than ``most`` images is clustered on a seeded sample of them, and every other
image joins the cluster whose mean feature is nearest.

Ranking (:func:`rank_clusters`): a cluster's *unusualness* is ``1 - cos`` between its mean feature and the mean
feature of the rest of the class (0: the same places as the other images, 1: disjoint places), and clusters come
most unusual first; the *main strategy* is the least unusual cluster. Two clusters are each other's rest, so
equally unusual: of those, the one most unlike the other classes' maps comes first (a shortcut is the class's
own, while the model looks at objects for every class: so a shortcut on more than half a class still ranks
first), and without other classes to compare with, the smaller. (Against the rest rather than against the largest
cluster: where the images of the main strategy split by the object's position, a planted shortcut on a third of the
images can be the largest single cluster, while the rest of the class still looks where the other images look.) A
cluster's *typical* images are those nearest its mean. Everything here is plain numpy and deterministic for a given
seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

SIDE = 16  # features are at most SIDE x SIDE cells
BLUR = 1.0  # the features are blurred by a Gaussian of this many cells: a shift of the object by a cell barely counts
ALIKE = 0.9  # clusters whose mean features have at least this cosine are merged into one strategy
MOST_CLUSTERS = 8  # the eigengap looks at this many clusters at most
MOST_NEIGHBOURS = 15  # k of the k-nearest-neighbour graph: about log2(n) + 1, from 3 to this


def neighbours(n: int) -> int:
    """k of the k-nearest-neighbour graph of ``n`` maps: ``round(log2 n) + 1`` within 3..:data:`MOST_NEIGHBOURS`
    (below ``n``); a small strategy linked to others by force gets weak links (the scale σ is the class's)."""
    return max(1, min(n - 1, max(3, min(MOST_NEIGHBOURS, round(math.log2(max(n, 1))) + 1))))


def downsampled(grid: np.ndarray, side: int = SIDE) -> np.ndarray:
    """``grid`` (R x C) area-averaged to at most ``side`` x ``side`` cells (unchanged when it is smaller):
    each output cell is the mean of the input cells it overlaps, weighted by the overlap."""
    grid = np.asarray(grid, dtype=np.float64)
    rows, cols = grid.shape
    return resized(grid, min(rows, side), min(cols, side))


def resized(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``a`` (2-D) resampled to ``rows`` x ``cols`` by area: each new cell the overlap-weighted mean of the old
    cells it covers (up or down)."""
    return _area(_area(np.asarray(a, dtype=np.float64), rows, 0), cols, 1)


def _area(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """``a`` resampled to ``n`` cells along ``axis`` by the overlap of the old cells with the new."""
    m = a.shape[axis]
    if n == m:
        return a
    return np.moveaxis(np.tensordot(_area_weights(m, n), np.moveaxis(a, axis, 0), axes=(1, 0)), 0, axis)


@functools.lru_cache(maxsize=64)
def _area_weights(m: int, n: int) -> np.ndarray:
    """n x m: the share of each new cell that each old cell covers (rows sum to 1)."""
    edges_old, edges_new = np.arange(m + 1) / m, np.arange(n + 1) / n
    lo = np.maximum(edges_new[:-1, None], edges_old[None, :-1])
    hi = np.minimum(edges_new[1:, None], edges_old[None, 1:])
    return np.clip(hi - lo, 0, None) * n


def blurred(a: np.ndarray, sigma: float = BLUR) -> np.ndarray:
    """``a`` (2-D) smoothed by a Gaussian of ``sigma`` cells (cut at 2 sigma), renormalised at the edges so that
    a constant stays constant."""
    if sigma <= 0:
        return a
    return _blur_weights(a.shape[0], sigma) @ a @ _blur_weights(a.shape[1], sigma).T


@functools.lru_cache(maxsize=64)
def _blur_weights(n: int, sigma: float) -> np.ndarray:
    radius = max(1, int(2 * sigma))
    offsets = np.arange(n)[None, :] - np.arange(n)[:, None]
    weights = np.where(np.abs(offsets) <= radius, np.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
    return weights / weights.sum(1, keepdims=True)


def feature(grid: np.ndarray, side: int = SIDE) -> np.ndarray:
    """A map's feature: its negative part, downsampled, blurred, flattened and scaled to unit sum (zeros if none)."""
    support = blurred(np.maximum(-downsampled(grid, side), 0.0)).ravel()
    total = support.sum()
    return support / total if total > 0 else support


def features(grids: list[np.ndarray] | np.ndarray, side: int = SIDE) -> np.ndarray:
    """N x F: one :func:`feature` per map; maps of one shape each (resample others first)."""
    grids = [np.asarray(g, dtype=np.float64) for g in grids]
    if not grids:
        return np.zeros((0, 0))
    return np.stack([feature(g, side) for g in grids])


def spectral_clusters(x: np.ndarray, seed: int = 0, most: int = 2000, most_clusters: int = MOST_CLUSTERS) -> np.ndarray:
    """A cluster index (0..k-1) per row of ``x`` (N x F features); k from the eigengap (see the module).
    Fewer than 4 rows, or rows all alike, are one cluster."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 4:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, most, replace=False)) if n > most else np.arange(n)
    labels = merged(x[sample], _spectral(x[sample], rng, most_clusters))
    if len(sample) == n:
        return labels
    centres = np.stack([x[sample][labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    return np.argmin(_squared_distances(x, centres), axis=1)


def merged(x: np.ndarray, labels: np.ndarray, alike: float = ALIKE) -> np.ndarray:
    """``labels`` with the two most alike clusters merged while their mean features have a cosine of at least
    ``alike``: a split that does not change where the model looks is no other strategy. Renumbered 0..k-1 by first
    row."""
    labels = np.asarray(labels).copy()
    while True:
        ids = np.unique(labels)
        if len(ids) < 2:
            break
        centres = np.stack([x[labels == c].mean(0) for c in ids])
        norms = np.linalg.norm(centres, axis=1)
        cos = (centres @ centres.T) / np.maximum(np.outer(norms, norms), 1e-300)
        cos[np.outer(norms, norms) == 0] = 0.0
        np.fill_diagonal(cos, -np.inf)
        i, j = np.unravel_index(int(np.argmax(cos)), cos.shape)
        if cos[i, j] < alike:
            break
        labels[labels == ids[j]] = ids[i]
    _, first = np.unique(labels, return_index=True)
    renumber = {int(labels[f]): n for n, f in enumerate(np.sort(first))}
    return np.array([renumber[int(v)] for v in labels], dtype=np.int64)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def affinity(x: np.ndarray, k: int | None = None) -> np.ndarray:
    """The symmetric k-nearest-neighbour graph (k: :func:`neighbours`) with Gaussian weights
    ``exp(-d²/(σ_i σ_j))``: σ_i the distance of row i to its k-th neighbour (self-tuning, Zelnik-Manor & Perona
    2004), but at least the median of those over the class, so that a tight group of near-copies (a planted
    shortcut's maps) is not cut apart by its own tiny differences."""
    n = len(x)
    k = neighbours(n) if k is None else max(1, min(k, n - 1))
    d2 = _squared_distances(x, x)
    np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    sigma = np.sqrt(d2[np.arange(n), order[:, -1]])
    floor = float(np.median(sigma))
    sigma = np.maximum(sigma, floor if floor > 0 else 1.0)
    near = np.zeros((n, n), dtype=bool)
    near[np.repeat(np.arange(n), k), order.ravel()] = True
    near |= near.T
    np.fill_diagonal(d2, 0.0)
    return np.where(near, np.exp(-d2 / np.outer(sigma, sigma)), 0.0)


def eigengap(values: np.ndarray, most_clusters: int = MOST_CLUSTERS) -> int:
    """The number of clusters from the ascending eigenvalues of a normalised Laplacian: the k (1..most) that
    maximises ``values[k] - values[k-1]``."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    top = min(most_clusters, len(values) - 1)
    if top < 1:
        return 1
    gaps = np.diff(values[: top + 1])
    return int(np.argmax(gaps)) + 1


def _spectral(x: np.ndarray, rng: np.random.Generator, most_clusters: int) -> np.ndarray:
    n = len(x)
    if np.allclose(x, x[0]):
        return np.zeros(n, dtype=np.int64)
    a = affinity(x)
    degree = a.sum(1)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    laplacian = np.eye(n) - scale[:, None] * a * scale[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    k = eigengap(values, min(most_clusters, n // 2))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    embedded = vectors[:, :k]
    embedded = embedded / np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
    return kmeans(embedded, k, rng)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, restarts: int = 8, steps: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ starts, the best of ``restarts`` (least within-cluster squares); the
    clusters renumbered by their first row, so that the same grouping always gets the same numbers."""
    best, best_cost = None, np.inf
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = _squared_distances(x, np.stack(centres)).min(1)
            p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1 / len(x))
            centres.append(x[rng.choice(len(x), p=p)])
        c = np.stack(centres)
        labels = np.zeros(len(x), dtype=np.int64)
        for _ in range(steps):
            new = np.argmin(_squared_distances(x, c), axis=1)
            if _ > 0 and np.array_equal(new, labels):
                break
            labels = new
            c = np.stack([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
        cost = float(np.sum((x - c[labels]) ** 2))
        if cost < best_cost - 1e-12:
            best, best_cost = labels, cost
    assert best is not None  # a restart with a finite cost (below inf) is kept
    _, first = np.unique(best, return_index=True)
    renumber = np.empty(best.max() + 1, dtype=np.int64)
    renumber[best[np.sort(first)]] = np.arange(len(first))
    return renumber[best]


@dataclass(frozen=True)
class Ranked:
    """One cluster of a class, as :func:`rank_clusters` ranks it: the rows of its members, the rows of its
    most typical members (nearest its mean feature first), its mean feature and its unusualness."""

    members: np.ndarray
    typical: np.ndarray
    centre: np.ndarray
    unusualness: float
    main: bool


def rank_clusters(
    x: np.ndarray, labels: np.ndarray, typical: int = 6, elsewhere: np.ndarray | None = None
) -> list[Ranked]:
    """The clusters of ``labels`` over the features ``x``, most unusual first; the last, the least unusual, is the
    main strategy. Equally unusual clusters (two clusters are each other's rest) come the most unlike
    ``elsewhere`` first (the summed features of the other classes' maps: where the model looks for them), then
    the smaller first."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if len(x) == 0:
        return []
    ids = np.unique(labels)
    total = x.sum(0)
    out = []
    for c in ids:
        members = np.flatnonzero(labels == c)
        centre = x[members].mean(0)
        rest = total - x[members].sum(0)  # the rest of the class (a sum: the cosine ignores the scale)
        near = np.argsort(((x[members] - centre) ** 2).sum(1), kind="stable")[:typical]
        score = round(unusualness(centre, rest), 9) if len(members) < len(x) else 0.0
        out.append(Ranked(members, members[near], centre, score, False))
    # most unusual first; equally unusual (two clusters are each other's rest): the most unlike the other classes'
    # maps first (a shortcut is the class's own, the object is looked at for every class), then the smaller
    unlike = {id(r): 0.0 if elsewhere is None else round(unusualness(r.centre, elsewhere), 9) for r in out}
    out.sort(key=lambda r: (-r.unusualness, -unlike[id(r)], len(r.members), int(r.members[0])))
    last = out[-1]
    out[-1] = Ranked(last.members, last.typical, last.centre, last.unusualness, True)  # the least unusual
    return out


def unusualness(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - cos(a, b)`` of two mean features (non-negative: in [0, 1]); 1 when either is all zeros and the
    other is not, 0 when both are."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(max(0.0, 1.0 - float(a @ b) / (na * nb)))
