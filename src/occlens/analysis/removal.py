"""Removal strategies: what a pixel becomes when a faithfulness curve removes it, in [0, 1] image space.

- ``gray``: 0.5 on every channel (the deletion of RISE, Petsiuk et al. 2018).
- ``blur``: the pixel of a Gaussian-blurred copy (kernel 11, σ 5; RISE's insertion substrate).
- ``road``: noisy linear imputation (ROAD, Rong et al., ICML 2022): every removed pixel becomes the
  weighted mean of its 8 neighbours, removed neighbours included (weight 1/6 for the 4 that share an
  edge, 1/12 for the diagonal ones, renormalised where the image ends), which is one sparse linear
  system per image; then Gaussian noise of standard deviation :data:`ROAD_NOISE` is added to the
  removed pixels. Removed pixels are thus told nothing of their own values, only of what is left, and
  a scattered removal leaves no gray dots for the model to react to. The noise is one seeded draw per
  image, so each pixel has the same noise at every step of a curve. With every pixel removed nothing
  is left to impute from (every constant solves the system): the image's per-channel mean is used, the
  constant closest to the image.

:func:`remove` takes a batch of masks (one per removal fraction) and returns the batch of images. Every
result is clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.checks import REMOVALS, check_removal  # noqa: F401 (their old home)
from ..core.errors import ConfigError
from ..core.fill import baseline

ROAD_NOISE = 0.01  # standard deviation, [0, 1] image units (ROAD's reference adds 0.01 to its normalised input)
# ROAD's neighbour weights: (row offset, column offset, weight)
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
              (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))  # fmt: skip


def remove(image: torch.Tensor, removed, removal: str, seed: int = 0) -> torch.Tensor:
    """``image`` (C x H x W, [0, 1]) with the pixels where ``removed`` (H x W, or N x H x W for a batch)
    is true replaced as ``removal`` says; returns C x H x W, or N x C x H x W for a batch of masks.

    With ``"road"`` the noise is one C x H x W draw seeded with ``seed``, the same for every mask: each
    image depends only on the image, its mask and the seed, not on the other masks of the batch.
    """
    removal = check_removal(removal)
    x = torch.as_tensor(image)
    masks = torch.as_tensor(np.asarray(removed, dtype=bool))
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    if x.ndim != 3 or masks.ndim != 3 or masks.shape[1:] != x.shape[1:]:
        raise ConfigError(
            f"removal masks must be H x W or N x H x W booleans matching the C x H x W image "
            f"{tuple(x.shape)}, got {tuple(masks.shape)}"
        )
    if removal == "road":
        pixels = x.detach().cpu().numpy().astype(np.float64)
        noise = ROAD_NOISE * np.random.default_rng(seed).standard_normal(pixels.shape)
        out = np.stack([np.where(m, impute(pixels, m) + noise, pixels) for m in masks.numpy()])
        result = torch.from_numpy(out).to(x.dtype).clamp_(0, 1)
    else:
        substrate = baseline(x, removal)
        result = torch.where(masks[:, None], substrate[None], x[None])
    return result[0] if single else result


def impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation (without the noise) of one C x H x W float64 image where ``removed`` (H x W)
    is true.

    Each removed pixel ``i`` satisfies ``x_i = Σ_j w_j x_j / Σ_j w_j`` over its neighbours ``j`` inside the
    image (:data:`NEIGHBOURS`); the kept pixels are the boundary values. The system is symmetric positive
    definite whenever one pixel is kept, and solved with SuperLU. Not clipped.
    """
    channels, height, width = image.shape
    flat = image.reshape(channels, -1)
    gone = np.asarray(removed, dtype=bool).ravel()
    unknown = np.flatnonzero(gone)
    out = flat.copy()
    if unknown.size == 0:
        return out.reshape(image.shape)
    if unknown.size == gone.size:
        out[:] = flat.mean(axis=1, keepdims=True)
    else:
        out[:, unknown] = _solve(flat, gone, unknown, height, width).T
    return out.reshape(image.shape)


def _solve(flat: np.ndarray, gone: np.ndarray, unknown: np.ndarray, height: int, width: int) -> np.ndarray:
    """The U x C values of the ``unknown`` pixels: ``(Σ_j w_j) x_i - Σ_{j removed} w_j x_j = Σ_{j kept} w_j v_j``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    n = unknown.size
    index = np.full(gone.size, -1, dtype=np.int64)
    index[unknown] = np.arange(n)
    rows, cols = np.divmod(unknown, width)
    diagonal = np.zeros(n)
    rhs = np.zeros((n, flat.shape[0]))
    a_rows, a_cols, a_values = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        eq = np.flatnonzero(inside)  # the equations (removed pixels) that have this neighbour
        neighbour = r[inside] * width + c[inside]
        diagonal[eq] += weight
        kept = ~gone[neighbour]
        rhs[eq[kept]] += weight * flat[:, neighbour[kept]].T  # each equation once per neighbour
        a_rows.append(eq[~kept])
        a_cols.append(index[neighbour[~kept]])
        a_values.append(np.full(a_rows[-1].size, -weight))
    a_rows.append(np.arange(n))
    a_cols.append(np.arange(n))
    a_values.append(diagonal)
    matrix = coo_matrix((np.concatenate(a_values), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n))
    solution = spsolve(matrix.tocsc(), rhs)  # COLAMD ordering: MMD_AT_PLUS_A took 100 s at 90% scattered
    return np.asarray(solution, dtype=np.float64).reshape(n, flat.shape[0])
