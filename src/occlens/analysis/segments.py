"""What a faithfulness curve removes at a time: single pixels, the windows of an occlusion grid, or
superpixels given as a label image.

An occlusion map on a partition is constant over each window, so removing it pixel by pixel ranks the
pixels of a window by their tie-break (raster order), not by the map. Removing whole segments judges
every map at the same granularity: a segment's score is the mean of the map over its pixels (for an
occlusion map on its own windows, exactly the window's δL).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import ConfigError
from ..core.grid import Grid


def segment_labels(segments, height: int, width: int) -> np.ndarray | None:
    """``None`` (pixels) stays None; a :class:`~occlens.Grid` gives its cells (:func:`window_cells`); an
    H x W integer array of superpixel labels is renumbered ``0..S-1`` in increasing label order."""
    if segments is None:
        return None
    if isinstance(segments, Grid):
        return window_cells(segments, height, width)
    labels = np.asarray(segments)
    if labels.shape != (height, width):
        raise ConfigError(
            f"segments have shape {labels.shape} but the image is {height}x{width}; pass an H x W array of "
            f"segment labels, a Grid, or None for single pixels"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ConfigError(
            f"segments must be integer labels (one per pixel), got dtype {labels.dtype}; "
            f"pass e.g. skimage.segmentation.slic(...) output, a Grid, or None for single pixels"
        )
    return np.unique(labels, return_inverse=True)[1].reshape(height, width).astype(np.int64)


def window_cells(grid: Grid, height: int, width: int) -> np.ndarray:
    """H x W labels of the cells that the grid's window edges cut the image into, in raster order.

    With ``stride == patch`` (a partition, the default) each cell is one window; with overlapping
    windows a cell is a block the same windows cover, over which the pixel map is constant.
    """
    if (grid.height, grid.width) != (height, width):
        raise ConfigError(
            f"the grid is for a {grid.height}x{grid.width} image but the image is {height}x{width}; "
            f"use the grid of this image's explanation"
        )
    bands = [_bands(*spans, size) for spans, size in ((grid.row_spans(), height), (grid.col_spans(), width))]
    return bands[0][:, None] * (bands[1].max() + 1) + bands[1][None, :]


def _bands(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Per pixel of one axis, the index of the band between consecutive window edges that holds it."""
    edges = np.unique(np.concatenate([starts, ends]))
    return np.searchsorted(edges, np.arange(size), side="right") - 1
