"""Is a map faithful? Removal curves (deletion, insertion, MoRF/LeRF and their symmetric relevance gain)
and the model randomisation check.

**Removal curves.** Pixels, or whole segments (the windows of an occlusion grid, superpixels), are
removed in the order the map ranks them and the probability of the class is recorded after each of
``steps`` equal steps; the area under it (trapezoid rule over the fraction of pixels removed, 0 to 1)
lies in [0, 1]. What a removed pixel becomes is the ``removal`` strategy (:mod:`.removal`: ``gray``,
``blur``, or ROAD's noisy linear imputation ``road``).

- **MoRF** (most relevant first; RISE's *deletion*, Petsiuk et al. 2018): a faithful map makes the
  probability fall fast, *lower* area is better. **LeRF** (least relevant first): it should stay up,
  *higher* area is better.
- **SRG** = AUC(LeRF) - AUC(MoRF), the symmetric relevance gain (Blücher et al., 2024): higher is better.
  Both curves start at the image and end with everything removed, and for a random map the two orders are
  equally likely, so its SRG is 0 on average by construction, whatever the removal does to the model.
  Deletion alone can be won by a random map: scattered gray pixels are a perturbation the model reacts to
  in its own right (ROAD, Rong et al., ICML 2022); SRG subtracts that reaction out.
- **Insertion** (RISE): pixels are revealed in the map's order, most relevant first, from the fully
  removed image; *higher* area is better (the x-axis is then the fraction revealed).

:func:`deletion_auc` and :func:`insertion_auc` keep RISE's substrates by default (gray, blur);
:func:`removal_curves` computes MoRF, LeRF and SRG with the strategy and granularity that separate real
maps from random ones best on the bundled photos (README, "Faithfulness").

The ranking direction is an explicit argument, ``first``: ``"lowest"`` for occlusion maps (negative δL
marks support) and ``"highest"`` for saliency maps. Ties go in raster order (row by row from the
top-left pixel; segments by label), so curves are deterministic. A segment's score is the mean of the
map over it.

**Randomisation check** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): the
parameters of a deep copy of the model are re-drawn layer by layer from the top (the output layer)
down, and the Spearman rank correlation between the original map and each re-computed map is
reported. A map that stays highly correlated while the model is destroyed does not explain the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..core.checks import DEFAULT_REMOVAL, DEFAULT_STEPS
from ..core.errors import ConfigError
from ..core.grid import Grid
from ..core.image import to_tensor
from ..core.result import frozen_array
from ..core.scoring import check_class, check_output, log_probs, scores_of
from ..engines.memory import auto_batch_size
from ..explanation import explain
from ..models.forward import call_model
from ..models.loaded import unwrap
from ..models.runner import prepared
from .removal import REMOVALS, check_removal, remove
from .saliency import METHODS, saliency
from .segments import segment_labels, window_cells
from .similarity import spearman
from .statistics import bootstrap_interval, paired_test

__all__ = [
    "DEFAULT_REMOVAL", "DEFAULT_STEPS", "ORDERS", "REMOVALS", "Curve", "RandomizationCheck", "RemovalCurves",
    "bootstrap_interval", "check_removal", "deletion_auc", "insertion_auc", "paired_test", "pixel_order",
    "random_map", "randomization_check", "remove", "removal_curves", "spearman", "window_cells",
]  # fmt: skip

ORDERS = ("lowest", "highest")
Explainer = Callable[[torch.nn.Module, torch.Tensor, int], np.ndarray]


@dataclass(frozen=True)
class Curve:
    """A removal curve: P(y=cls) after each step, over the fraction of pixels changed, and its area."""

    kind: str  # "deletion" or "morf" (most relevant removed first), "lerf" (least relevant first), "insertion"
    cls: int  # the class scored (the prediction Q unless a target was given)
    fractions: np.ndarray  # steps + 1 values from 0 to 1: pixels removed (revealed, for insertion) / all pixels
    scores: np.ndarray  # P(y=cls) at each fraction
    auc: float  # trapezoid area under scores over fractions, in [0, 1]
    removal: str = "gray"  # what a removed pixel became (:data:`REMOVALS`)


@dataclass(frozen=True)
class RemovalCurves:
    """The MoRF and LeRF curves of one map under one removal strategy, and their symmetric relevance gain."""

    morf: Curve  # most relevant first: lower area is better
    lerf: Curve  # least relevant first: higher area is better
    removal: str
    units: int  # the pixels or segments removed, about units / steps per step

    @property
    def srg(self) -> float:
        """AUC(LeRF) - AUC(MoRF), in [-1, 1]: higher is better, about 0 for a random map."""
        return self.lerf.auc - self.morf.auc


def removal_curves(
    model: Any,
    image: Any,
    saliency_map: ArrayLike,
    *,
    first: str,
    removal: str = DEFAULT_REMOVAL,
    segments: Grid | np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
    target: int | str | None = None,
    seed: int = 0,
    output: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> RemovalCurves:
    """MoRF and LeRF curves of ``saliency_map`` (H x W) and their SRG (``.srg``, higher = more faithful).

    ``first``: ``"lowest"`` for occlusion's ``pixel_map`` (negative δL supports the class), ``"highest"``
    for saliency maps. ``removal``: ``"gray"``, ``"blur"`` or ``"road"`` (:mod:`occlens.analysis.removal`).
    ``segments``: None removes single pixels; a :class:`~occlens.Grid` (``result.grid``) removes the
    cells of its windows, an H x W integer array removes superpixels, each scored by the map's mean
    over it. ``steps``: equal steps of ``units / steps`` pixels or segments (rounded down; at most one
    step per unit, so fewer steps when there are fewer units), ``steps + 1`` forward passes per curve.
    ``seed``: of ROAD's noise. Model arguments as in :func:`occlens.explain`.
    """
    (morf, lerf), units = _curves(("morf", "lerf"), model, image, saliency_map, first, removal, segments, steps,
                                  target, seed, output, batch_size, device)  # fmt: skip
    return RemovalCurves(morf, lerf, morf.removal, units)


def deletion_auc(
    model: Any,
    image: Any,
    saliency_map: ArrayLike,
    *,
    first: str,
    target: int | str | None = None,
    steps: int = 100,
    removal: str = "gray",
    segments: Grid | np.ndarray | None = None,
    seed: int = 0,
    output: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Curve:
    """Remove pixels in the order of ``saliency_map`` (H x W), most relevant first; lower area = more faithful.

    RISE's deletion: removed pixels turn gray (0.5) unless ``removal`` says otherwise. This is the MoRF
    curve of :func:`removal_curves`; other arguments as there. ``steps`` equal steps of ``H*W/steps``
    pixels (rounded down), ``steps + 1`` forward passes.
    """
    (curve,), _ = _curves(("deletion",), model, image, saliency_map, first, removal, segments, steps, target, seed,
                          output, batch_size, device)  # fmt: skip
    return curve


def insertion_auc(
    model: Any,
    image: Any,
    saliency_map: ArrayLike,
    *,
    first: str,
    target: int | str | None = None,
    steps: int = 100,
    removal: str = "blur",
    segments: Grid | np.ndarray | None = None,
    seed: int = 0,
    output: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Curve:
    """Reveal pixels in the order of ``saliency_map``, most relevant first, from the image with every pixel
    removed (RISE: a blurred copy, unless ``removal`` says otherwise); higher area = more faithful.

    At each step the pixels not yet revealed are the removed ones. Arguments as in :func:`deletion_auc`.
    """
    (curve,), _ = _curves(("insertion",), model, image, saliency_map, first, removal, segments, steps, target, seed,
                          output, batch_size, device)  # fmt: skip
    return curve


def pixel_order(saliency_map: ArrayLike, first: str) -> np.ndarray:
    """Flat pixel indices, most supporting first; ties in raster order (a stable sort)."""
    return np.argsort(_ranked(np.asarray(saliency_map, dtype=np.float64).ravel(), first), kind="stable")


def _ranked(values: np.ndarray, first: str) -> np.ndarray:
    """``values`` as sort keys: ascending keys are most supporting first."""
    if first not in ORDERS:
        raise ConfigError(
            f"first must be 'lowest' (occlusion maps: negative δL supports) or 'highest' (saliency maps), got {first!r}"
        )
    return values if first == "lowest" else -values


def _curves(
    kinds: tuple[str, ...], model: Any, image: Any, saliency_map: ArrayLike, first: str, removal: str,
    segments: Grid | np.ndarray | None, steps: int, target: int | str | None, seed: int, output: str | None,
    batch_size: int | None, device: str | torch.device | None,
) -> tuple[list[Curve], int]:  # fmt: skip
    """The curves of ``kinds`` from one clean pass, and the number of units (pixels or segments) they remove."""
    model, image, output, names = unwrap(model, image, output)
    check_output(output)
    removal = check_removal(removal)
    x = to_tensor(image)
    _, height, width = x.shape
    m = _check_map(saliency_map, height, width)
    labels = segment_labels(segments, height, width)
    n = height * width
    if labels is None:
        units, unit_of = n, np.arange(n)
        scores_per_unit = m.ravel()
    else:
        unit_of = labels.ravel()
        units = int(unit_of.max()) + 1
        scores_per_unit = np.bincount(unit_of, weights=m.ravel(), minlength=units) / np.bincount(unit_of)
    what = "pixels" if labels is None else "segments"
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"steps must be a positive int (at most one step per unit: {units} {what}), got {steps!r}")
    steps = min(int(steps), units)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive int or None (automatic), got {batch_size!r}")
    order = np.argsort(_ranked(scores_per_unit, first), kind="stable")  # units, most relevant first
    unit_rank = np.empty(units, dtype=np.int64)
    unit_rank[order] = np.arange(units)
    rank = unit_rank[unit_of].reshape(height, width)  # each pixel: the rank of its unit
    counts = np.arange(steps + 1, dtype=np.int64) * units // steps  # units removed (revealed) after each step
    curves = []
    with prepared(model, device) as runner:
        x_dev = x.to(runner.device, runner.dtype)
        clean = log_probs(scores_of(call_model(runner.forward, x_dev[None], "the image"), 1), output)[0]
        cls = int(clean.argmax()) if target is None else check_class(target, clean.shape[0], "target", names)
        assert cls is not None  # check_class gives None for None only
        size = batch_size or auto_batch_size(steps + 1, x_dev, runner.device, None, isinstance(model, torch.nn.Module))
        for kind in kinds:
            masks = _masks(kind, rank, counts, units)
            changed = masks if kind != "insertion" else ~masks
            fractions = changed.reshape(steps + 1, -1).sum(axis=1) / n
            images = remove(x, masks, removal, seed)
            scores = np.empty(steps + 1, dtype=np.float64)
            for lo in range(0, steps + 1, size):
                hi = min(lo + size, steps + 1)
                batch = images[lo:hi].to(runner.device, runner.dtype, copy=True)  # fresh, aligned memory per batch
                raw = call_model(runner.forward, batch, f"{kind} steps {lo}..{hi - 1}")
                scores[lo:hi] = log_probs(scores_of(raw, hi - lo), output, [cls])[:, 0].exp().numpy()
            auc = float(np.sum(np.diff(fractions) * (scores[1:] + scores[:-1]) / 2))
            curves.append(Curve(kind, cls, frozen_array(fractions), frozen_array(scores), auc, removal))
    return curves, units


def _masks(kind: str, rank: np.ndarray, counts: np.ndarray, units: int) -> np.ndarray:
    """steps + 1 x H x W: the pixels removed at each step (``rank``: 0 = the most relevant unit)."""
    if kind in ("deletion", "morf"):
        return rank[None] < counts[:, None, None]
    if kind == "lerf":
        return rank[None] >= units - counts[:, None, None]
    return rank[None] >= counts[:, None, None]  # insertion: what is not yet revealed


def _check_map(saliency_map: ArrayLike, height: int, width: int) -> np.ndarray:
    if isinstance(saliency_map, torch.Tensor):
        saliency_map = saliency_map.detach().cpu()
    m = np.asarray(saliency_map, dtype=np.float64)
    if m.shape != (height, width):
        raise ConfigError(
            f"the map has shape {m.shape} but the image is {height}x{width}; pass an H x W pixel map "
            f"(for an OcclusionResult, .pixel_map rather than .delta)"
        )
    if not np.isfinite(m).all():
        raise ConfigError(f"the map has {int((~np.isfinite(m)).sum())} NaN or infinite values; pass a finite map")
    return m


def random_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An H x W map of i.i.d. uniform values: the baseline every faithful map should beat."""
    return frozen_array(np.random.default_rng(seed).random((height, width)))


# ---------------------------------------------------------------------------------------------
# randomisation check


@dataclass(frozen=True)
class RandomizationCheck:
    """Cascading randomisation: ``correlations[i]`` compares the original map with ``maps[i]``,
    computed after re-drawing the top ``randomized[i]`` layers of ``layers`` (top first)."""

    cls: int  # the class explained throughout: the original model's prediction unless a target was given
    layers: tuple[str, ...]  # modules that own parameters, in randomisation order (output layer first)
    randomized: tuple[int, ...]  # how many of them were re-drawn at each stage
    correlations: np.ndarray  # Spearman rank correlation with the original map, per stage
    original: np.ndarray  # H x W
    maps: np.ndarray  # stages x H x W


def randomization_check(
    model: torch.nn.Module,
    image: Any,
    *,
    explainer: str | Explainer = "gradient",
    target: int | str | None = None,
    stages: int | None = None,
    output: str | None = None,
    seed: int = 0,
) -> RandomizationCheck:
    """Re-draw a deep copy's layers from the top down; rank-correlate each new map with the original.

    ``explainer``: ``"gradient"``, ``"gradient_x_input"`` (:func:`occlens.saliency`), ``"occlusion"``
    (:func:`occlens.explain`'s pixel map, default settings), or a function ``(model, image, cls) -> H x W``.
    Each parameter tensor of a layer is re-drawn from a normal distribution with that tensor's own mean
    and standard deviation (seeded by ``seed``); buffers such as batch-norm statistics are kept.
    ``stages``: how many cascade points to evaluate, evenly spaced and ending with every layer
    re-drawn (default: one per layer). The caller's model is never changed.
    """
    model, image, output, names = unwrap(model, image, output)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"the randomisation check re-draws a torch module's parameters; got {type(model).__name__}, "
            f"which has none to re-draw"
        )
    check_output(output)
    explain_fn = _explainer(explainer, output)
    x = to_tensor(image)
    work = copy.deepcopy(model).eval()  # our copy: evaluated in eval mode, no warning per stage
    layers = [(name, m) for name, m in work.named_modules() if any(True for _ in m.parameters(recurse=False))][::-1]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no parameters to randomise")
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1):
        raise ConfigError(f"stages must be a positive int or None (one per layer), got {stages!r}")
    n = len(layers)
    stages = n if stages is None else min(stages, n)
    points = [-(-n * i // stages) for i in range(1, stages + 1)]  # ceil(n * i / stages): evenly spaced, ends at n
    with prepared(work) as runner:
        raw = call_model(runner.forward, x.to(runner.device, runner.dtype)[None], "the image")
    clean = log_probs(scores_of(raw, 1), output)[0]
    cls = int(clean.argmax()) if target is None else check_class(target, clean.shape[0], "target", names)
    assert cls is not None  # check_class gives None for None only
    original = np.asarray(explain_fn(work, x, cls), dtype=np.float64)
    generator = torch.Generator().manual_seed(seed)
    maps, done = [], 0
    for point in points:
        for _, layer in layers[done:point]:
            _redraw(layer, generator)
        done = point
        maps.append(np.asarray(explain_fn(work, x, cls), dtype=np.float64))
    return RandomizationCheck(
        cls=cls,
        layers=tuple(name for name, _ in layers),
        randomized=tuple(points),
        correlations=frozen_array([spearman(original, m) for m in maps]),
        original=frozen_array(original),
        maps=frozen_array(np.stack(maps)),
    )


def _redraw(layer: torch.nn.Module, generator: torch.Generator) -> None:
    """Replace each of the layer's own parameters by normal noise with the tensor's mean and std."""
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            values = p.detach().to("cpu", torch.float64)
            mean, std = values.mean(), values.std(unbiased=False)
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.copy_((mean + std * noise).to(p.dtype))


def _explainer(explainer: str | Explainer, output: str) -> Explainer:
    if callable(explainer):
        return explainer
    if explainer in METHODS:
        return lambda m, x, k: saliency(m, x, k, method=explainer, output=output)
    if explainer == "occlusion":
        return lambda m, x, k: _occlusion_map(m, x, k, output)
    raise ConfigError(
        f"explainer must be one of {', '.join(METHODS)}, occlusion or a function (model, image, cls) -> map, "
        f"got {explainer!r}"
    )


def _occlusion_map(model: torch.nn.Module, x: torch.Tensor, cls: int, output: str) -> np.ndarray:
    result = explain(model, x, target=cls, output=output, progress=False)
    return result.pixel_map
