"""The figure of a volume's result: slices through the voxel map over the volume, and a band result's bars.

Top row: three orthogonal slices (axial, coronal, sagittal) through the centre of the most negative window (the
one whose occlusion raised the loss most: it supported what is explained most), the voxel map over the volume's
slices, that window's box outlined. Bottom row: axial slices spread over the depth. Red is negative δL (the
region supported the class), blue positive, on a scale symmetric about zero shared by every panel. A band
result (``patch="bands"``) is drawn as one bar per band group, and band windows' (``patch=("bands", N)``) as one
pixel map per band group.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..core.errors import ConfigError
from ..core.grid import BandGrid, BandWindowGrid, VolumeGrid
from ..core.result import OcclusionResult
from .colours import CMAP

ROW = 6  # axial slices in the bottom row
ALPHA = 0.55  # of the map over the volume


def _scale(values: np.ndarray) -> float:
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return top if top > 0 else 1.0


def plot_slices(result: OcclusionResult, volume=None, sub_target: int = 0, row: int = ROW) -> Figure:
    """The slices figure of a volume's ``result`` (this module's doc) over ``volume`` (an :class:`occlens.Volume`
    or a C x D x H x W / D x H x W array in [0, 1]; None: the map alone), or the bars of a band result."""
    if isinstance(result.grid, BandGrid):
        return plot_bands(result, sub_target)
    if isinstance(result.grid, BandWindowGrid):
        return plot_band_windows(result, sub_target, row)
    if not isinstance(result.grid, VolumeGrid):
        raise ConfigError("plot_slices draws a volume's result; a 2-D image's is drawn by occlens.plot")
    grid: VolumeGrid = result.grid
    voxels = result.pixel_maps[sub_target]
    delta = result.deltas[sub_target]
    background = None
    if volume is not None:
        v = volume.unit() if hasattr(volume, "unit") else volume
        v = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float32)
        background = v[0] if v.ndim == 4 else v
        if background.shape != voxels.shape:
            raise ConfigError(f"the volume's shape {background.shape} is not the result's {voxels.shape}")
    front, back, top, bottom, left, right = grid.window(int(np.argmin(delta)))
    centre = worst_centre(result, sub_target)
    lim = _scale(voxels)
    fig = Figure(figsize=(3.0 * max(3, row) / 2, 6.4), layout="constrained")
    axes = fig.subplots(2, max(3, row))
    for ax in axes.ravel():
        ax.set_axis_off()
    views = [
        ("axial", lambda a: a[centre[0]], (left, right, top, bottom), f"d={centre[0]}"),
        ("coronal", lambda a: a[:, centre[1]], (left, right, front, back), f"h={centre[1]}"),
        ("sagittal", lambda a: a[:, :, centre[2]], (top, bottom, front, back), f"w={centre[2]}"),
    ]
    image = None
    for ax, (name, cut, (x0, x1, y0, y1), where) in zip(axes[0], views, strict=False):
        if background is not None:
            ax.imshow(cut(background), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        image = ax.imshow(cut(voxels), cmap=CMAP, vmin=-lim, vmax=lim, alpha=ALPHA if background is not None else 1,
                          interpolation="nearest")  # fmt: skip
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="black", linewidth=1.2))
        ax.set_title(f"{name} {where}", fontsize=9)
    depths = np.linspace(0, grid.depth - 1, min(row, grid.depth)).round().astype(int)
    for ax, d in zip(axes[1], depths, strict=False):
        if background is not None:
            ax.imshow(background[d], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(voxels[d], cmap=CMAP, vmin=-lim, vmax=lim, alpha=ALPHA if background is not None else 1,
                  interpolation="nearest")  # fmt: skip
        ax.set_title(f"axial d={d}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[0, -1] if row > 3 else axes[0, 2], shrink=0.8, label="δL")
    g = grid
    fig.suptitle(
        f"{_what(result)}: δL per window ({g.planes}x{g.rows}x{g.cols} windows of {'x'.join(map(str, g.patch))}); "
        f"red = negative: the region supported it, blue = it argued against",
        fontsize=9,
    )
    return fig


def worst_centre(result: OcclusionResult, sub_target: int = 0) -> tuple[int, int, int]:
    """The voxel ``(d, h, w)`` at the centre of a volume result's most negative window (the first of equals): where
    its figure cuts the three slices, and the depth of the report's card."""
    grid = result.grid
    assert isinstance(grid, VolumeGrid), "worst_centre takes a volume's result"
    front, back, top, bottom, left, right = grid.window(int(np.argmin(result.deltas[sub_target])))
    return (front + back - 1) // 2, (top + bottom - 1) // 2, (left + right - 1) // 2


def plot_bands(result: OcclusionResult, sub_target: int = 0) -> Figure:
    """One bar per band group: its δL (negative, red: the band supported what is explained)."""
    grid = result.grid
    assert isinstance(grid, BandGrid)  # plot_slices sends band results only (OcclusionResult.grid says Grid)
    delta = result.deltas[sub_target]
    fig = Figure(figsize=(max(4.0, 0.5 * len(delta) + 2), 3.2), layout="constrained")
    ax = fig.subplots()
    colours = ["#b2182b" if v < 0 else "#2166ac" for v in delta]
    ax.bar(range(len(delta)), delta, color=colours)
    ax.set_xticks(range(len(delta)), grid.names, rotation=45 if len(delta) > 8 else 0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("δL")
    ax.set_title(f"{_what(result)}: δL per band (red = negative: the band supported it)", fontsize=9)
    return fig


def plot_band_windows(result: OcclusionResult, sub_target: int = 0, row: int = ROW) -> Figure:
    """Band windows: one pixel map per band group (``result.pixel_maps[sub_target]``, B x H x W), ``row`` a row, on
    one colour scale, the group's most negative window outlined."""
    grid = result.grid
    assert isinstance(grid, BandWindowGrid)  # plot_slices sends band windows' results only
    maps, delta = result.pixel_maps[sub_target], result.deltas[sub_target]
    count = len(grid.names)
    columns = max(1, min(row, count))
    lines = -(-count // columns)
    fig = Figure(figsize=(2.6 * columns + 0.8, 2.6 * lines + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(lines, columns)).ravel()
    lim = _scale(maps)
    image = None
    for ax in axes:
        ax.set_axis_off()
    for b, (ax, name) in enumerate(zip(axes, grid.names, strict=False)):
        image = ax.imshow(maps[b], cmap=CMAP, vmin=-lim, vmax=lim, interpolation="nearest")
        _, top, bottom, left, right = grid.window(b * grid.space.size + int(np.argmin(delta[b])))
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="black",
                               linewidth=1.2))  # fmt: skip
        ax.set_title(f"band {name}: min δL {float(delta[b].min()):.3g}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="δL")
    g = grid
    fig.suptitle(f"{_what(result)}: δL per band and window ({g.shape[0]} bands x {g.shape[1]}x{g.shape[2]} windows "
                 f"of {'x'.join(map(str, g.patch))}); red = negative: the band there supported it", fontsize=9)
    return fig


def _what(result: OcclusionResult) -> str:
    if result.target_kind == "class":
        names = result.labels
        t = result.target
        return f"class {t}" + (f" {names[t]!r}" if names is not None and isinstance(t, int) else "")
    return f"target {result.target!r}"
