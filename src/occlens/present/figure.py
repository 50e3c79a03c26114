"""The seed's figure: the image with its windows, the R x C map of δL, and the map over the image.

Drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot state, nothing is
shown); every function returns the figure or draws into the axes it is given. The
figure :func:`plot` makes is an :class:`InlineFigure`: a notebook shows it where it
ends a cell (or is passed to ``display``), once, as a compact PNG; a script shows nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..core.errors import ConfigError, ImageError, option, shown
from ..core.grid import BandGrid, BandWindowGrid, VolumeGrid
from ..core.image import to_tensor
from ..core.result import ClassMap, OcclusionResult
from .colours import CMAP  # the one colour map of δL (figures, report, viewer)

SALIENCY_CMAP = "magma"  # gradient magnitude, >= 0: bright = salient
PANEL_INCHES = 3.6
INLINE_DPI = 80  # a notebook's picture: 960 px wide for three panels, about the width of a notebook's cell
INLINE_COLOURS = 256  # its palette: the demo's figures take 40-131 KB, not 161-454 KB (RGBA, 80 dpi)


class InlineFigure(Figure):
    """A matplotlib :class:`~matplotlib.figure.Figure` that shows itself in a notebook: where it is the value
    of a cell, or given to ``display()``, it is drawn once as a compact PNG (:func:`inline_png`), whatever
    matplotlib backend the notebook runs (pyplot never knows it, so the inline backend does not draw it a
    second time at the end of the cell, and ``plt.show()`` does not show it). Outside IPython it is a plain
    figure: a script shows nothing; ``savefig`` writes what it always writes."""

    def _ipython_display_(self) -> None:  # asked before any formatter, the inline backend's registered one too
        from base64 import b64encode

        from IPython.display import display

        png = b64encode(inline_png(self)).decode("ascii")
        display({"image/png": png, "text/plain": repr(self)}, raw=True)

    def _repr_png_(self) -> bytes:  # for front ends that ask for a PNG the plain way
        return inline_png(self)


def inline_png(fig: Figure) -> bytes:
    """``fig`` as a notebook shows it: :data:`INLINE_DPI`, on white, in a palette of :data:`INLINE_COLOURS`
    (an octree's, which keeps the colour maps' saturated ends; no dithering, which would blur the maps)."""
    import io

    from PIL import Image

    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=INLINE_DPI, facecolor="white")
    picture = Image.open(drawn).convert("RGB").quantize(INLINE_COLOURS, Image.Quantize.FASTOCTREE)
    compact = io.BytesIO()
    picture.save(compact, format="PNG", optimize=True)
    return compact.getvalue()


def class_name(k: int | str, labels: Sequence[str] | None) -> str:
    """``"281 tabby"`` with names, ``"281"`` without; another kind of target (or sub-target): its spelling."""
    if isinstance(k, str):
        return k
    return f"{k} {labels[k]}" if labels is not None and 0 <= k < len(labels) else str(k)


def colorbar_label(k: int, labels: Sequence[str] | None) -> str:
    """The colour bar's words: which sign means what, for class ``k``."""
    name = class_name(k, labels)
    return f"δL = L − L_occl\nred (< 0): supports {name}\nblue (> 0): argues against it"


def plot(
    result: OcclusionResult,
    image,
    *,
    labels: Sequence[str] | None = None,
    ax: Sequence[Axes] | np.ndarray | None = None,
    true_class: bool | None = None,
    saliency: np.ndarray | Sequence[np.ndarray] | None = None,
) -> Figure:
    """Draw the explanation; return the figure.

    ``image`` is the explained image (any form :func:`occlens.explain` accepts, at the
    resolution explained). ``labels`` are class names. One row of three panels for
    the explained class, and a second row for the true class K when ``true_class``
    is True, which is the default when K was given and differs from the prediction.
    ``ax``: axes to draw into, three per row (shape (3,) or (rows, 3)); by default a
    new figure is made. ``saliency``: gradient saliency maps (:func:`occlens.saliency`) to
    draw as a fourth panel per row, one H x W map or one per row (explained class, then K);
    ``ax`` then has four axes per row. A result with ``all_classes`` gets one more panel per
    row (drawn in the first): what the model says instead of Q where a window is occluded.
    A volume's result is drawn by :func:`occlens.present.slices.plot_slices` (three orthogonal slices through
    the most negative window, over ``image``: the volume, or None for the map alone), a band result's as bars.
    """
    if not isinstance(result, OcclusionResult):
        raise ConfigError(
            f"result must be an OcclusionResult (what occlens.explain returns), got {shown(result)}; "
            f"call occlens.plot(result, image)", option="result", value=result, expected="an OcclusionResult",
            fix="occlens.plot(result, image)",
        )  # fmt: skip
    if isinstance(result.grid, (VolumeGrid, BandGrid, BandWindowGrid)):  # a volume: its slices; bands: bars or maps
        from .slices import plot_slices

        return plot_slices(result, image)
    rgb = to_tensor(image).permute(1, 2, 0).numpy()
    if rgb.shape[:2] != (result.grid.height, result.grid.width):
        raise ImageError(
            f"image is {rgb.shape[0]}x{rgb.shape[1]} but the result was computed on "
            f"{result.grid.height}x{result.grid.width}; pass the image as it was explained (result.image, when "
            f"the result holds it)", option="image", value=rgb.shape[:2],
            expected=f"{result.grid.height}x{result.grid.width}", fix="pass the image as it was explained",
        )  # fmt: skip
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    labels = checked_labels(labels, None if result.probabilities is None else len(result.probabilities))
    if true_class is not None and not isinstance(true_class, bool):
        raise ConfigError(f"true_class must be True, False or None (draw K's row for a mistake), got "
                          f"{shown(true_class)}", option="true_class", value=true_class,
                          expected="True, False or None")  # fmt: skip
    maps = rows_of(result, true_class)
    gradients = saliency_maps(saliency, rgb.shape[:2])
    instead = result.flip_map is not None  # all_classes: a panel of what the model says instead, first row
    ncols = 3 + bool(gradients) + instead
    if ax is None:
        size = (ncols * PANEL_INCHES + 1.2 + 0.8 * (ncols - 3), len(maps) * PANEL_INCHES + 0.9 + instead)
        fig = InlineFigure(figsize=size, layout="constrained")
        axes = np.asarray(fig.subplots(len(maps), ncols, squeeze=False))
    else:
        axes = axes_of(ax, ncols, len(maps), bool(gradients), instead)
        fig = axes.flat[0].figure
        if len(axes) < len(maps):
            maps = maps[: len(axes)]
    limit = max(float(np.abs(m.delta).max()) for m in maps) or 1.0
    for i, (row, class_map) in enumerate(zip(axes, maps, strict=False)):
        draw_row(row[:3], result, class_map, rgb, labels, limit)
        extra = list(row[3:])
        if gradients:
            ax = extra.pop(0)
            if i < len(gradients):
                draw_saliency(ax, gradients[i], rgb, class_name(class_map.cls, labels))
            else:
                ax.set_axis_off()
        if instead and i == 0:
            draw_instead(extra[0], result, labels)
        elif instead:
            extra[0].set_axis_off()
    fig.suptitle(title(result, labels), fontsize=10, parse_math=False)  # names are literal text, "$" too
    return fig


def axes_of(ax, ncols: int, rows: int, gradients: bool, instead: bool) -> np.ndarray:
    """``plot``'s ``ax`` as rows of ``ncols`` axes; a ConfigError that says what the figure needs otherwise."""
    try:
        given = np.asarray([ax] if isinstance(ax, Axes) else ax, dtype=object)
    except ValueError:  # rows of different lengths
        given = np.asarray([ax], dtype=object)
    flat = given.ravel()
    if flat.size and flat.size % ncols == 0 and all(isinstance(a, Axes) for a in flat):
        return flat.reshape(-1, ncols)
    panels = ["the image", "the δL grid", "the pixel map"]
    panels += ["the saliency map"] * gradients + ["what the model says instead"] * instead
    if all(isinstance(a, Axes) for a in flat):
        got = f"{flat.size} Axes" + (f" (shape {given.shape})" if given.ndim > 1 else "")
    else:
        got = shown(ax) if given.ndim == 0 else f"{shown(next(a for a in flat if not isinstance(a, Axes)))} in it"
    fix = f"fig.subplots({rows}, {ncols})"
    raise ConfigError(
        f"ax must be matplotlib Axes, {ncols} per row ({', '.join(panels)}), {rows} row(s) for this "
        f"result; got {got}; pass e.g. {fix}, or leave ax out for a new figure",
        option="ax", value=ax, expected=f"{ncols} Axes per row", fix=fix,
    )  # fmt: skip


def checked_labels(labels, classes: int | None) -> tuple[str, ...] | None:
    """``plot``'s ``labels``, checked: None, or one name per class of the result (``classes``: None for a result
    without class scores, a segmenter's, whose names are not counted here)."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ConfigError(
            f"{option('labels')} must be the class names, a list of strings, one per class, got {shown(labels)}; "
            f"e.g. labels=model.labels",
            option="labels", value=labels, expected="a list of class names", fix="labels=model.labels",
        )  # fmt: skip
    if classes is not None and len(labels) != classes:
        raise ConfigError(
            f"{option('labels')} name {len(labels)} classes but the result has {classes}; give the names of the "
            f"model that was explained: labels=model.labels", option="labels", value=len(labels),
            expected=f"{classes} names", fix="labels=model.labels",
        )  # fmt: skip
    return tuple(str(name) for name in labels)


MAX_SUB_TARGET_ROWS = 6  # a figure draws the first sub-targets' maps; the result holds them all


def rows_of(result: OcclusionResult, true_class: bool | None) -> list[ClassMap]:
    """The maps drawn, one row each: the explained class, then (``true_class``; by default for a mistake or a
    multi-label truth) K's map and one per true label."""
    if true_class is None:
        true_class = result.correct is False or bool(result.true_maps)
    maps = list(result.target_maps[:MAX_SUB_TARGET_ROWS])  # a target's sub-targets: a row each (a class: one)
    if true_class and result.label_map is not None:
        maps.append(result.label_map)
    if true_class:  # a multi-label truth: a row per true label (the explained class has its row already)
        maps += [m for m in result.true_maps if m.cls != result.target]
    return maps


def title(result: OcclusionResult, labels: Sequence[str] | None) -> str:
    """Q with name and probability, K with name, correct/incorrect, "random weights" for such a model, L."""
    p = result.probabilities
    if result.predicted is None:  # a segmenter: no class for the image
        head = f"{result.target_kind} target {result.target}"
        if len(result.target_maps) > 1:
            drawn = min(len(result.target_maps), MAX_SUB_TARGET_ROWS)
            head += f" · {len(result.target_maps)} sub-targets ({drawn} drawn)"
    else:
        head = f"predicted Q = {class_name(result.predicted, labels)} (p = {p[result.predicted]:.3f})"
    if result.label is not None:
        verdict = "correct" if result.correct else "INCORRECT"
        head += f" · true K = {class_name(result.label, labels)} (p = {p[result.label]:.3f}) · {verdict}"
    if result.true_labels is not None:
        found = sum(v for _, _, v in result.verdicts())
        head += (
            f" · true labels {', '.join(class_name(c, labels) for c in result.true_labels)}: {found} of "
            f"{len(result.true_labels)} predicted (p > {result.settings.threshold:g})"
            f"{'' if result.correct else ' · INCORRECT'}"
        )
    if result.target != result.predicted and result.predicted is not None:
        head += f" · explaining {class_name(result.target, labels)}"
    if result.meta.get("weights") == "random":  # an architecture built without trained weights
        head += " · random weights"
    explained = score_words(result, result.target_map, labels)
    return head + f"\nL = −s, s = {explained}; L = {result.loss:.3f} · {result.windows} windows"


def score_words(result: OcclusionResult, class_map: ClassMap, labels: Sequence[str] | None) -> str:
    """What ``s`` is for one map, in words: ``log P(y=281 tabby)``, ``y_0``, ``log P(tabby) − log P(tiger cat)``,
    ``mean log P(person) over its region``."""
    kind = result.target_kind if class_map in result.target_maps else "class"
    info = next((i for m, i in zip(result.target_maps, result.target_info, strict=False) if m is class_map), {})
    if kind == "class":
        return f"log P(y={class_name(class_map.cls, labels)})"
    if kind == "margin":
        return f"log P({info.get('q_name', '?')}) − log P({info.get('k_name', '?')})"
    if kind == "regression":
        return f"y_{info.get('index', '?')} (the model's output {info.get('index', '?')}, in its units)"
    if kind == "segment":
        return f"mean log P({info.get('class_name', class_map.cls)}) over its region ({info.get('pixels', '?')} px)"
    if kind == "box":
        return f"log max(ε, max IoU · score) of the {info.get('class_name', class_map.cls)} detections matching its box"
    return f"{result.target_kind} {class_map.cls}"


def draw_row(
    axes: Sequence[Axes],
    result: OcclusionResult,
    class_map: ClassMap,
    rgb: np.ndarray,
    labels: Sequence[str] | None,
    limit: float,
) -> None:
    """Three panels for one class: the image with its windows, the R x C map, the map over the image."""
    texts = row_texts(result, class_map, labels)
    ax_image, ax_grid, ax_pixels = axes
    ax_image.imshow(rgb, interpolation="nearest")
    if result.target_kind == "segment" and "segmentation" in result.target_arrays:
        draw_segments(ax_image, result, class_map, rgb.shape[:2])
    elif result.target_kind == "box" and "boxes" in result.target_arrays:
        draw_box(ax_image, result, class_map)
    else:
        draw_windows(ax_image, result)
    ax_image.set_title(texts[0], fontsize=9, parse_math=False)
    shown = ax_grid.imshow(class_map.delta, cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax_grid.set_title(texts[1], fontsize=9, parse_math=False)
    bar = ax_grid.figure.colorbar(shown, ax=ax_grid, fraction=0.046, pad=0.03)
    bar.set_label(texts[2], fontsize=8, parse_math=False)
    ax_pixels.imshow(rgb.mean(axis=2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax_pixels.imshow(class_map.pixel_map, cmap=CMAP, vmin=-limit, vmax=limit, alpha=0.6, interpolation="nearest")
    ax_pixels.set_title(texts[3], fontsize=9, parse_math=False)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])


def draw_segments(ax: Axes, result: OcclusionResult, class_map: ClassMap, size: tuple[int, int]) -> None:
    """A segmenter's clean predicted mask over the image, with the region of ``class_map`` outlined (the mask
    and region are at the model's output resolution, stretched over the image)."""
    height, width = size
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    mask = np.asarray(result.target_arrays["segmentation"])
    ax.imshow(mask, cmap="tab20", alpha=0.45, extent=extent, interpolation="nearest", vmin=0, vmax=19)
    t = next((i for i, m in enumerate(result.target_maps) if m is class_map), None)
    regions = result.target_arrays.get("regions")
    if t is not None and regions is not None and np.asarray(regions[t]).any():
        region = np.pad(np.asarray(regions[t], dtype=float), 1)  # closed outlines at the borders too
        h, w = region.shape[0] - 2, region.shape[1] - 2
        ys = (np.arange(-1, h + 1) + 0.5) * height / h - 0.5
        xs = (np.arange(-1, w + 1) + 0.5) * width / w - 0.5
        ax.contour(xs, ys, region, levels=[0.5], colors="white", linewidths=1.5)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)


def draw_box(ax: Axes, result: OcclusionResult, class_map: ClassMap) -> None:
    """A box target's reference box (in the model input's pixels) over the image, the other boxes dashed."""
    t = next((i for i, m in enumerate(result.target_maps) if m is class_map), None)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(result.target_arrays["boxes"], dtype=float)):
        mine = i == t
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white" if mine else
                               "0.8", linewidth=2.0 if mine else 0.8, linestyle="-" if mine else "--"))  # fmt: skip


def row_texts(result: OcclusionResult, class_map: ClassMap, labels: Sequence[str] | None) -> tuple[str, ...]:
    """One row's words: the image panel's title, the grid's title, its colour bar's label, the pixel map's title."""
    grid = result.grid
    name = class_name(class_map.cls, labels)
    role = "true class K" if class_map is result.label_map else "explained class"
    if result.target_kind != "class" and any(m is class_map for m in result.target_maps):
        role = {"segment": "segment (clean mask, region outlined)", "margin": "margin",
                "regression": "regression output", "box": "box (outlined)"}.get(result.target_kind,
                                                                                result.target_kind)  # fmt: skip
    if any(m is class_map for m in result.true_maps) and class_map is not result.target_map:
        p = float(result.probabilities[class_map.cls])
        role = f"true label ({'predicted' if p > result.settings.threshold else 'MISSED'}, p = {p:.3f})"
    return (
        f"{role}: {name}\n{grid.rows}x{grid.cols} windows of {grid.patch[0]}x{grid.patch[1]}, "
        f"stride {grid.stride[0]}x{grid.stride[1]}",
        f"δL per window for {name}",
        colorbar_label(class_map.cls, labels)
        if result.target_kind == "class" or class_map is result.label_map
        else f"δL = L − L_occl, L = −s\nred (< 0): supports {name}\nblue (> 0): argues against it",
        f"pixel map for {name}, L = {class_map.loss:.3f}",
    )


INSTEAD_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
SAME_COLOUR, OTHER_COLOUR = "#d9d9d9", "#606060"


def draw_instead(ax: Axes, result: OcclusionResult, labels: Sequence[str] | None) -> None:
    """The R x C map of the top class of each occluded copy: gray where it stays Q, a colour per class that
    takes over (the most frequent ones; the rest dark gray), with a legend of names and window counts."""
    ax.imshow(instead_colours(result), interpolation="nearest")
    ax.set_title(instead_title(result), fontsize=9, parse_math=False)
    instead_legend(ax, result, labels)
    ax.set_xticks([])
    ax.set_yticks([])


def instead_colours(result: OcclusionResult) -> np.ndarray:
    """R x C x 3: gray where the prediction stays, a colour per class that takes over."""
    flips = result.flip_map
    colour = {c: INSTEAD_COLOURS[i] for i, (c, _) in enumerate(result.instead(len(INSTEAD_COLOURS)))}
    rgb = np.empty((*flips.shape, 3))
    for index, k in np.ndenumerate(flips):
        rgb[index] = to_rgb(SAME_COLOUR if k == result.predicted else colour.get(int(k), OTHER_COLOUR))
    return rgb


def instead_title(result: OcclusionResult) -> str:
    return f"what the model says instead\n{result.flips} of {result.windows} windows change the prediction"


def instead_legend(ax: Axes, result: OcclusionResult, labels: Sequence[str] | None) -> None:
    taken = result.instead(len(INSTEAD_COLOURS))
    colour = {c: INSTEAD_COLOURS[i] for i, (c, _) in enumerate(taken)}
    handles = [Patch(color=SAME_COLOUR, label=f"still {class_name(result.predicted, labels)}")]
    handles += [Patch(color=colour[c], label=f"{class_name(c, labels)} ({n})") for c, n in taken]
    rest = (result.flips or 0) - sum(n for _, n in taken)
    if rest:
        handles.append(Patch(color=OTHER_COLOUR, label=f"other classes ({rest})"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)


def saliency_maps(saliency, shape: tuple[int, int]) -> list[np.ndarray]:
    """``plot``'s ``saliency`` argument as a list of H x W arrays, shapes checked."""
    if saliency is None:
        return []
    if isinstance(saliency, np.ndarray) and saliency.ndim == 2:
        saliency = [saliency]
    expected = "an H x W saliency map (occlens.saliency) or a list of them"
    try:
        if isinstance(saliency, (str, bytes)) or not isinstance(saliency, (Sequence, np.ndarray)):
            raise TypeError
        out = [np.asarray(m) for m in saliency]
        if not all(np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer) for m in out):
            raise TypeError
        out = [m.astype(np.float64) for m in out]
    except (TypeError, ValueError):  # not real numbers
        raise ConfigError(f"saliency must be {expected}, got {shown(saliency)}", option="saliency",
                          value=saliency, expected=expected) from None  # fmt: skip
    for m in out:
        if m.shape != tuple(shape):
            raise ConfigError(
                f"saliency map has shape {m.shape} but the image is {shape[0]}x{shape[1]}; "
                f"pass occlens.saliency(model, image) of the image as it was explained"
            )
    return out


def draw_saliency(ax: Axes, gradient: np.ndarray, rgb: np.ndarray, name: str) -> None:
    """The gradient saliency map over the image, clipped at its 99th percentile so that a few pixels do not
    wash it out."""
    ax.imshow(rgb.mean(axis=2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    top = float(np.percentile(gradient, 99)) or float(gradient.max()) or 1.0
    shown = ax.imshow(gradient, cmap=SALIENCY_CMAP, vmin=0, vmax=top, alpha=0.7, interpolation="nearest")
    ax.set_title(f"gradient saliency for {name}\n(backward pass, for comparison)", fontsize=9, parse_math=False)
    bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(f"|∂ log P(y={name}) / ∂x|, max over channels\nbright: most salient", fontsize=8, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_windows(ax: Axes, result: OcclusionResult) -> None:
    """The window grid over the image: the lines where windows start, the first window outlined."""
    (row_starts, _), (col_starts, _) = result.grid.row_spans(), result.grid.col_spans()
    style = {"color": "white", "linewidth": 0.5, "alpha": 0.6}
    for r in row_starts[1:]:
        ax.axhline(r - 0.5, **style)
    for c in col_starts[1:]:
        ax.axvline(c - 0.5, **style)
    top, bottom, left, right = result.grid.window(0)
    ax.add_patch(
        Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="yellow", linewidth=1.2)
    )


class Figures:
    """The figures of many results (a dataset run), fast: one figure per layout, drawn by :func:`plot` for
    the first result and then updated in place for each next one (``set_data``, ``set_text``,
    ``set_clim``), its layout computed once. The content is :func:`plot`'s; the panels keep the first
    figure's positions, so a figure's pixels (not its content) can depend on which image came first.
    ``png(result, image, labels, true_class)`` returns the PNG's bytes."""

    KEPT = 4  # layouts kept (rows x panels x shapes); a run has one or two
    COMPRESS = 3  # zlib level of the PNGs: 6 (matplotlib's) takes twice as long for files 5-20% smaller

    def __init__(self, dpi: int = 110) -> None:
        self.dpi = dpi
        self._kept: dict[tuple, Figure] = {}

    def png(self, result: OcclusionResult, image, labels: Sequence[str] | None = None, true_class=None) -> bytes:
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        rgb = to_tensor(image).permute(1, 2, 0).numpy()
        maps = rows_of(result, true_class)
        g = result.grid
        key = (len(maps), result.flip_map is not None, rgb.shape, g.height, g.width, g.patch, g.stride)
        fig = self._kept.pop(key, None)
        if fig is None:
            fig = plot(result, image, labels=labels, true_class=true_class)
            FigureCanvasAgg(fig)
            fig.set_dpi(self.dpi)  # drawn at this resolution from now on: no re-layout of every text per save
            fig.canvas.draw()  # lays the figure out, once
            fig.set_layout_engine("none")
        else:
            self._update(fig, result, rgb, maps, labels)
            fig.canvas.draw()
        self._kept[key] = fig  # most recently used last
        while len(self._kept) > self.KEPT:
            self._kept.pop(next(iter(self._kept)))
        width, height = fig.canvas.get_width_height()
        picture = Image.frombuffer("RGBA", (width, height), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=self.COMPRESS)
        return buffer.getvalue()

    @staticmethod
    def _update(fig: Figure, result: OcclusionResult, rgb: np.ndarray, maps: list[ClassMap], labels) -> None:
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        limit = max(float(np.abs(m.delta).max()) for m in maps) or 1.0
        ncols = 3 + (result.flip_map is not None)
        axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        rows = np.asarray(axes, dtype=object).reshape(len(maps), ncols)
        gray = rgb.mean(axis=2)
        for row, class_map in zip(rows, maps, strict=True):
            texts = row_texts(result, class_map, labels)
            ax_image, ax_grid, ax_pixels = row[:3]
            ax_image.images[0].set_data(rgb)
            ax_image.title.set_text(texts[0])
            shown = ax_grid.images[0]
            shown.set_data(class_map.delta)
            shown.set_clim(-limit, limit)
            ax_grid.title.set_text(texts[1])
            shown.colorbar.set_label(texts[2], fontsize=8, parse_math=False)
            ax_pixels.images[0].set_data(gray)
            overlay = ax_pixels.images[1]
            overlay.set_data(class_map.pixel_map)
            overlay.set_clim(-limit, limit)
            ax_pixels.title.set_text(texts[3])
        if result.flip_map is not None:
            ax = rows[0][3]
            ax.images[0].set_data(instead_colours(result))
            ax.title.set_text(instead_title(result))
            ax.get_legend().remove()
            instead_legend(ax, result, labels)
        fig._suptitle.set_text(title(result, labels))
