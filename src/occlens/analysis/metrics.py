"""Is a map faithful? Deletion/insertion (Petsiuk et al., RISE, BMVC 2018) and the model randomisation check.

**Deletion**: pixels are removed (set to gray, 0.5 on every channel) in the order the map ranks them,
most supporting first, and the probability of the class is recorded after each step; a faithful map
makes it fall fast: *lower* area is better. **Insertion**: pixels are revealed in the same order, from a
blurred copy (Gaussian, kernel 11, σ 5) back to the image; *higher* area is better. The area is the
trapezoid rule over the fraction of pixels changed, which runs from 0 to 1, so it lies in [0, 1].

The ranking direction is an explicit argument, ``first``: ``"lowest"`` for occlusion maps (negative δL
marks support) and ``"highest"`` for saliency maps. Ties go in raster order (row by row from the
top-left pixel), so curves are deterministic.

**Randomisation check** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): the
parameters of a deep copy of the model are re-drawn layer by layer from the top (the output layer)
down, and the Spearman rank correlation between the original map and each re-computed map is
reported. A map that stays highly correlated while the model is destroyed does not explain the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.fill import baseline
from ..core.image import to_tensor
from ..core.result import frozen_array
from ..core.scoring import check_class, check_output, log_probs, scores_of
from ..engines.memory import auto_batch_size
from ..explain import explain
from ..models.forward import call_model
from ..models.guard import prepared, unwrap
from .saliency import METHODS, saliency
from .similarity import spearman

ORDERS = ("lowest", "highest")
Explainer = Callable[[torch.nn.Module, torch.Tensor, int], np.ndarray]


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: P(y=cls) after changing ``fractions`` of the pixels, and its area."""

    kind: str  # "deletion" or "insertion"
    cls: int  # the class scored (the prediction Q unless a target was given)
    fractions: np.ndarray  # steps + 1 values from 0 to 1: pixels changed / all pixels
    scores: np.ndarray  # P(y=cls) at each fraction
    auc: float  # trapezoid area under scores over fractions, in [0, 1]


def deletion_auc(
    model,
    image,
    saliency_map,
    *,
    first: str,
    target: int | None = None,
    steps: int = 100,
    output: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Curve:
    """Remove pixels to gray in the order of ``saliency_map`` (H x W); lower area = more faithful.

    ``first="lowest"`` removes the lowest values first (occlusion's ``pixel_map``: negative δL
    supports the class), ``"highest"`` the highest (saliency maps). ``steps`` equal steps of
    ``H*W/steps`` pixels (rounded down), ``steps + 1`` forward passes.
    """
    return _curve("deletion", model, image, saliency_map, first, target, steps, output, batch_size, device)


def insertion_auc(
    model,
    image,
    saliency_map,
    *,
    first: str,
    target: int | None = None,
    steps: int = 100,
    output: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Curve:
    """Reveal pixels from a blurred copy in the order of ``saliency_map``; higher area = more faithful.

    Arguments as in :func:`deletion_auc`.
    """
    return _curve("insertion", model, image, saliency_map, first, target, steps, output, batch_size, device)


def pixel_order(saliency_map, first: str) -> np.ndarray:
    """Flat pixel indices, most supporting first; ties in raster order (a stable sort)."""
    if first not in ORDERS:
        raise ConfigError(
            f"first must be 'lowest' (occlusion maps: negative δL supports) or 'highest' (saliency maps), got {first!r}"
        )
    m = np.asarray(saliency_map, dtype=np.float64).ravel()
    return np.argsort(m if first == "lowest" else -m, kind="stable")


def _curve(kind, model, image, saliency_map, first, target, steps, output, batch_size, device) -> Curve:
    model, image, output, names = unwrap(model, image, output)
    check_output(output)
    x = to_tensor(image)
    _, height, width = x.shape
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
    n = height * width
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise ConfigError(f"steps must be an int from 1 to the number of pixels ({n}), got {steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive int or None (automatic), got {batch_size!r}")
    rank = np.empty(n, dtype=np.int64)
    rank[pixel_order(m, first)] = np.arange(n)
    counts = np.arange(steps + 1, dtype=np.int64) * n // steps  # pixels changed after each step
    with prepared(model, device) as runner:
        x_dev = x.to(runner.device, runner.dtype)
        if kind == "deletion":
            start, end = x_dev, baseline(x, "gray").to(x_dev)
        else:
            start, end = baseline(x, "blur").to(x_dev), x_dev
        clean = log_probs(scores_of(call_model(runner.forward, x_dev[None], "the image"), 1), output)[0]
        cls = int(clean.argmax()) if target is None else check_class(target, clean.shape[0], "target", names)
        rank_dev = torch.as_tensor(rank, device=runner.device).view(1, 1, height, width)
        counts_dev = torch.as_tensor(counts, device=runner.device)
        size = batch_size or auto_batch_size(steps + 1, x_dev, runner.device, None, isinstance(model, torch.nn.Module))
        scores = np.empty(steps + 1, dtype=np.float64)
        for lo in range(0, steps + 1, size):
            hi = min(lo + size, steps + 1)
            changed = rank_dev < counts_dev[lo:hi].view(-1, 1, 1, 1)  # B x 1 x H x W
            raw = call_model(
                runner.forward, torch.where(changed, end[None], start[None]), f"{kind} steps {lo}..{hi - 1}"
            )
            scores[lo:hi] = log_probs(scores_of(raw, hi - lo), output, [cls])[:, 0].exp().numpy()
    fractions = counts / n
    auc = float(np.sum(np.diff(fractions) * (scores[1:] + scores[:-1]) / 2))
    return Curve(kind, cls, frozen_array(fractions), frozen_array(scores), auc)


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
    image,
    *,
    explainer: str | Explainer = "gradient",
    target: int | None = None,
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
        return lambda m, x, k: explain(m, x, target=k, output=output).pixel_map
    raise ConfigError(
        f"explainer must be one of {', '.join(METHODS)}, occlusion or a function (model, image, cls) -> map, "
        f"got {explainer!r}"
    )
