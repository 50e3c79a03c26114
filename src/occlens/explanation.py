"""``occlens.explain``: the one entry point. Image in, OcclusionResult out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from .core.checks import NOT_CLASSES, check_int, is_bands
from .core.errors import ConfigError, ImageError, ModelError, option, shown, warn
from .core.fill import baseline
from .core.grid import Grid
from .core.image import read_image, to_tensor
from .core.progress import Progress, reporting
from .core.result import ClassMap, OcclusionResult, frozen_array
from .core.scoring import PROB_TOLERANCE, check_truth, log_probs, model_output
from .core.settings import Settings, settings_with
from .core.targets import (
    EPSILON,
    FLOOR_WARNING,
    Bound,
    Clean,
    Score,
    Target,
    as_target,
    class_scores,
    floored,
    returned,
)
from .core.volume import Bands, Volume
from .engines.choice import Engine, select
from .engines.costmodel import counted
from .engines.dense import together
from .engines.drilldown import COARSE, FACTOR, first_windows
from .engines.memory import auto_batch_size
from .models.adapters import NumpyModel
from .models.forward import Forward, call_model, make_forward, runnable_precision
from .models.loaded import LoadedModel, unwrap
from .models.recognise import for_images, record
from .models.runner import Runner, computes_in_torch, prepared
from .volumes import explain_declared, is_declared, windows_for_image

# one image, as explain takes it (a list of them gives a list of results)
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor | Volume | Bands


@overload
def explain(
    model,
    image: ImageInput,
    label: int | str | Sequence[int | str] | None = ...,
    *,
    patch: int | tuple[int, ...] | str | None = ...,
    stride: int | tuple[int, ...] | None = ...,
    fill: str | float | tuple[float, ...] = ...,
    output: str | None = ...,
    target: int | str | Target | Callable[..., Any] | None = ...,
    batch_size: int | None = ...,
    device: str | torch.device | None = ...,
    seed: int = ...,
    layout: str | None = ...,
    precision: str = ...,
    compile: bool = ...,
    engine: str = ...,
    fast: bool = ...,
    budget: float | None = ...,
    all_classes: bool = ...,
    threshold: float = ...,
    preprocess: str | dict | object | None = ...,
    max_pixels: int | None = ...,
    top_k: int = ...,
    progress: bool | Progress | None = ...,
    settings: Settings | None = ...,
) -> OcclusionResult: ...


@overload
def explain(
    model,
    image: list[ImageInput],
    label: int | str | list | None = ...,
    *,
    patch: int | tuple[int, ...] | str | None = ...,
    stride: int | tuple[int, ...] | None = ...,
    fill: str | float | tuple[float, ...] = ...,
    output: str | None = ...,
    target: int | str | Target | Callable[..., Any] | list | None = ...,
    batch_size: int | None = ...,
    device: str | torch.device | None = ...,
    seed: int = ...,
    layout: str | None = ...,
    precision: str = ...,
    compile: bool = ...,
    engine: str = ...,
    fast: bool = ...,
    budget: float | None = ...,
    all_classes: bool = ...,
    threshold: float = ...,
    preprocess: str | dict | object | None = ...,
    max_pixels: int | None = ...,
    top_k: int = ...,
    progress: bool | Progress | None = ...,
    settings: Settings | None = ...,
) -> list[OcclusionResult]: ...


def explain(
    model,
    image,
    label: int | str | Sequence[int | str] | list | None = None,
    *,
    patch: int | tuple[int, ...] | str | None = None,
    stride: int | tuple[int, ...] | None = None,
    fill: str | float | tuple[float, ...] = "gray",
    output: str | None = None,
    target: int | str | Target | Callable[..., Any] | list | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    layout: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    engine: str = "auto",
    fast: bool = False,
    budget: float | None = None,
    all_classes: bool = False,
    threshold: float = 0.5,
    preprocess: str | dict | object | None = None,
    max_pixels: int | None = None,
    top_k: int = 5,
    progress: bool | Progress | None = None,
    settings: Settings | None = None,
) -> OcclusionResult | list[OcclusionResult]:
    """Occlusion sensitivity of ``model``'s prediction on ``image`` (or on each of a list of images).

    Slides a ``patch`` window with ``stride`` (default: ``stride = patch``, a
    partition) over the image, replaces the window by ``fill`` in [0, 1] image
    space, and returns, per window ``i``, ``δL_i = L - L_occl_i`` where
    ``L = -log P(y=Q | x)`` on the clean image and ``L_occl_i`` the same class's
    loss on the occluded copy. **Negative δL: the region supported the class.**

    Args:
        model: a :class:`~occlens.LoadedModel` (from :func:`occlens.load_model`), a
            ``torch.nn.Module`` or any callable on float N x C x H x W tensors returning
            N x classes scores. Run as given (its device and dtype); a module in training
            mode is evaluated in eval mode and restored afterwards. A ``LoadedModel`` brings
            its preprocessing, output kind and class names: a path or PIL image is resized and
            cropped to its input as the command line does, classes may be named
            (``label="tabby"``), and ``result.meta`` holds the names (as in the command's JSON).
            A module given with ``preprocess``, or a timm module (its ``pretrained_cfg``) given a path
            or PIL image, is treated so too, for the call.
        image: a path, PIL image, H x W x C numpy array (uint8 0-255 or float 0-1) or
            C x H x W tensor; arrays and tensors (and, with a plain module that says nothing of its
            preprocessing, files, with a warning) are explained at their own resolution. A list of images
            gives a list of results, in order; ``label`` and ``target`` are then one value for all images or
            a list with one per image (a multi-label truth is a list inside that list). Images of one shape
            share one plan, and where the dense engine runs them exactly they share forward passes: the
            windows of several images fill one batch.
        label: the true class K (an index, or a name with a ``LoadedModel``), if known; the
            result then says whether K == Q and also carries the map of K (``label_map``) from
            the same forward passes. With a sigmoid head, a list of classes is a multi-label truth:
            ``result.true_maps`` holds a map per true label, ``result.verdicts()`` says which of them
            the model predicts (probability above ``threshold``), ``result.correct`` whether it predicts
            exactly them.
        patch, stride: window size and step, an int or ``(height, width)``. ``patch=None``: the model's
            own patch size for a ``LoadedModel`` with a patch embedding (ViT, DeiT, Swin...: windows that
            occlude whole tokens), else 16.
        fill: ``"gray"`` (0.5), ``"mean"`` (per-channel image mean), ``"black"``, ``"blur"``
            (Gaussian, kernel 11, sigma 5), ``"noise"`` (uniform, ``seed``ed), a number in
            [0, 1] or one number per channel.
        output: what the model returns: ``"logits"``, ``"probs"`` or ``"log_probs"``
            (default: the ``LoadedModel``'s, else ``"logits"``).
        target: what the map explains instead of the prediction Q: a class (index or name), or a target
            value of another kind (:mod:`occlens.targets`: any object with ``bind`` and ``spec``).
        batch_size: occluded images per forward pass; ``None`` picks one that fits memory.
        device: where to run; ``None`` is the model's device. The model is never moved.
        seed: seed of the ``"noise"`` fill.
        layout: set it when ``model`` is a function on *numpy* batches (scikit-learn, Keras, JAX,
            an endpoint...): ``"NCHW"`` or ``"NHWC"`` is the array layout it receives.
        precision: ``"fp32"`` (exact; default), or ``"bf16"`` / ``"fp16"`` to run a torch model
            under autocast (faster; the loss is still computed in float64). On a CPU without native
            support for the type (where autocast would run several times slower), fp32 runs instead,
            with a warning; ``result.settings.precision`` says what ran.
        compile: run the model through ``torch.compile`` (pays off on long runs).
        engine: ``"dense"`` (every occluded image through the model), ``"incremental"`` (exact; a
            CNN traced with torch.fx recomputes only what each window changes; dense, with a
            warning, for models it cannot trace) or ``"auto"`` (incremental where the cost model
            predicts a win, else dense; the same map either way; the default). ``result.engine``
            says which ran.
        fast: approximate drill-down: score a checkerboard of the windows, then, pass by pass, the
            windows whose scored neighbours disagree most, until the map looks smooth; the other
            windows are interpolated (see :mod:`occlens.engines.drilldown`). ``result.engine`` then starts
            with ``"drilldown+"`` and ``result.meta["drilldown"]`` says how many windows were scored.
        budget: seconds for the whole call: an anytime map, coarse to fine (an every-4th lattice of windows
            first, then the checkerboard, then the rest where the map is roughest), the best one reached
            by the deadline (for a list, each image's); unscored windows are interpolated. The first pass
            (about an eighth of the windows) always runs; a budget long enough scores every window, which
            gives the exact map.
            ``result.engine`` starts with ``"anytime+"``; ``result.meta["anytime"]`` says how many windows
            were scored and whether the map is ``complete`` (exact).
        max_pixels: the largest image file accepted, in pixels (default: Pillow's decompression-bomb
            limit; 0: no limit).
        top_k: how many top classes a ``LoadedModel``'s result lists by name in ``meta``.
        all_classes: keep δL for every class from the same forward passes (no extra model calls):
            ``result.all_delta`` (classes x R x C, float32) and ``result.flip_map`` (R x C, the top class of each
            occluded copy; ``result.flips`` windows change the prediction, ``result.instead()`` says to what).
            With ``fast`` or ``budget``, windows not scored are interpolated, these too.
        threshold: a sigmoid head predicts the classes whose probability is above it (default 0.5).
        preprocess: how a photo becomes the model's input (resize, centre crop, mean and std), in place of
            the model's own: ``"imagenet"`` (resize 256, crop 224, ImageNet mean/std), a torchvision weights
            enum such as ``ResNet50_Weights.DEFAULT`` or its name (its ``transforms()``; its class names for a
            model with as many outputs), an :class:`occlens.models.Preprocess`, or ``"none"`` (a plain module's
            images as given, without the warning). The mean and std are applied inside, after occlusion;
            arrays and tensors are taken as at the input size already, in [0, 1]. ``result.meta["preprocess"]``
            records what was applied.
        progress: a bar of the windows scored (tqdm's; a widget in a notebook where ipywidgets is
            installed): ``None`` (default) draws one when someone watches, in a notebook or with stderr a
            terminal (not in a log), ``True`` always, ``False`` never. A function is called as
            ``progress(done, total)`` after each batch instead (with ``fast``, ``total`` grows by each pass
            the drill-down decides to run; for a list, both count the windows of every image begun so far).
        settings: an :class:`occlens.Settings` holding these options at once (e.g. kept from an earlier call,
            or ``result.settings``); a keyword given beside it, other than its default, overrides it.
    """
    if isinstance(model, (str, os.PathLike)):  # a spec or a file: load_model's to read
        fix = f"occlens.explain(occlens.load_model({str(model)!r}), image)"
        raise ConfigError(f"{option('model')} must be a model, got the path or name {shown(str(model))}; load it "
                          f"first: {fix}", option="model", value=model, expected="a model", fix=fix)  # fmt: skip
    if not callable(model) and callable(image):
        fix = "occlens.explain(model, image)"
        raise ConfigError(f"{option('model')} must be a model, got {shown(model)}, and image is {shown(image)}: the "
                          f"model comes first: {fix}", option="model", value=model, expected="a model",
                          fix=fix)  # fmt: skip
    if layout is not None and (not isinstance(layout, str) or layout not in LAYOUTS):
        raise ConfigError(f"{option('layout')} must be 'NCHW' or 'NHWC' (how the model wants its numpy input), got "
                          f"{shown(layout)}", option="layout", value=layout, expected="'NCHW' or 'NHWC'")  # fmt: skip
    top_k, max_pixels = check_int(0)(top_k, "top_k"), check_int(0, none="Pillow's limit")(max_pixels, "max_pixels")
    settings = settings_with(
        settings, patch=patch, stride=stride, fill=fill, output=output, batch_size=batch_size, seed=seed,
        precision=precision, compile=compile, engine=engine, fast=fast, budget=budget, all_classes=all_classes,
        threshold=threshold, preprocess=preprocess,
    )  # fmt: skip
    rest = {"device": device, "layout": layout, "max_pixels": max_pixels, "top_k": top_k}
    if is_bands(settings.patch) or any(is_declared(one) for one in (image if isinstance(image, list) else [image])):
        return _declared(model, image, label, target, settings, device, progress)  # volumes, bands: occlens.volumes
    windows_for_image(settings)
    if not isinstance(image, list):
        with reporting(progress, "windows", _named(image)) as report:
            return _explain(model, [image], [label], [target], settings, progress=report, **rest)[0]
    labels, targets = _per_image(image, label, target)
    with reporting(progress, "windows", f"explain {len(image)} images") as report:
        return _explain(model, image, labels, targets, settings, progress=report, **rest)


def _declared(model, image, label, target, settings: Settings, device, progress):
    """A volume, a band image or band occlusion (:mod:`occlens.volumes`); a list of them, one at a time."""
    if not isinstance(image, list):
        with reporting(progress, "windows", _named(image)) as report:
            return explain_declared(model, image, label, target, settings, device=device, progress=report)
    labels, targets = _per_image(image, label, target)
    return [_declared(model, *one, settings, device, progress) for one in zip(image, labels, targets, strict=True)]


def _named(image) -> str:
    """What a bar calls one image: its file's name, when it has one."""
    return os.path.basename(image) if isinstance(image, (str, os.PathLike)) else "explain"


LAYOUTS = ("NCHW", "NHWC")  # a numpy model's input (occlens.models.adapters.NumpyModel)
SHARED_BATCHES = 8  # images sharing forward passes wait until their windows fill whole batches, or this many


@dataclass(frozen=True)
class _Call:
    """What every image of one :func:`explain` call shares."""

    model: object  # as the caller gave it (a LoadedModel preprocesses the images)
    bare: object  # what runs: the module or callable (wrapped for ``layout``)
    output: str
    names: tuple[str, ...] | None
    settings: Settings
    max_pixels: int | None
    runner: Runner
    plain: Forward  # uncompiled: the one-image passes
    torch_model: bool
    count: int  # images


@dataclass
class _Pending:
    """One image between its clean pass and its occluded passes."""

    x: torch.Tensor  # C x H x W, float32, on the CPU
    path: str | None
    x_dev: torch.Tensor
    fill_dev: torch.Tensor
    grid: Grid
    clean: np.ndarray | None  # log-probabilities of every class; None: the model returns no class scores
    label: int | None
    truth: tuple[int, ...] | None
    target: int | str  # the class explained, or (another kind of target) its spelling
    explained: list[int | str]  # the classes (and sub-targets, by name) whose maps the result carries
    keys: list[int | str]  # what each row of the occluded scores is: a class, or a sub-target's name
    score: Score  # the model's output for N occluded copies -> N x len(keys)
    clean_scores: np.ndarray  # the same on the clean image
    engine: Engine
    seconds: float  # so far
    bound: Bound  # the target bound to this image: its sub-targets (keys: sub), its kind, what figures draw
    sub: list[int | str]  # the keys of the target's sub-targets, in order


def _explain(
    model,
    images: list,
    labels: list,
    targets: list,
    settings: Settings,
    *,
    device,
    layout,
    max_pixels,
    top_k,
    progress,
) -> list[OcclusionResult]:
    """:func:`explain` of each of ``images`` with its label and target, in one pass over the model.

    Images of one shape explained by the dense engine exactly share forward passes: the windows of as many
    images as one batch holds stream through the model together (:func:`occlens.engines.dense.together`).
    """
    if layout is not None and not isinstance(model, LoadedModel):  # numpy batches, normalised before (a preprocess)
        model, layout = NumpyModel(model, layout), None
    model, applied = for_images(model, settings.preprocess, images)  # applied: what a model left plain records
    loaded = model if isinstance(model, LoadedModel) else None
    bare, _, output, names = unwrap(model, None, settings.output)  # the model's parts; each image is read later
    settings = settings.resolved(getattr(loaded, "patch", None), output)
    precision, compile = settings.precision, settings.compile
    if layout is not None:
        bare = NumpyModel(bare, layout)
    torch_model = computes_in_torch(bare)
    results: list[OcclusionResult | None] = [None] * len(images)
    with prepared(bare, device) as runner:
        if not torch_model and (precision != "fp32" or compile):
            raise ConfigError(
                "precision and compile apply to torch modules, and this model runs outside torch (ONNX Runtime, "
                "numpy); run it with precision='fp32' and compile=False"
            )
        if torch_model and precision != "fp32":
            settings = replace(settings, precision=runnable_precision(precision, runner.device))
        precision = settings.precision
        plain = make_forward(runner.forward, runner.device, runner.channels is not None, precision, False)
        # torch.compile compiles once per batch shape: the one-image passes run uncompiled
        forward = (
            make_forward(runner.forward, runner.device, runner.channels is not None, precision, True)
            if compile
            else plain
        )
        call = _Call(model, bare, output, names, settings, max_pixels, runner, plain, torch_model, len(images))
        done = [0]  # windows scored so far, over all images

        def report(offset: int):
            if progress is None:
                return None
            return lambda scored, total: progress(offset + scored, offset + total)

        def finish(members: list[tuple[int, _Pending]], occluded, size, used, notes, seconds) -> None:
            for (i, one), scores in zip(members, occluded, strict=True):
                result = _result(one, scores, size, used, notes, one.seconds + seconds, settings, runner, names)
                if loaded is not None:
                    result = named(result, loaded, one.path, top_k)
                results[i] = result if applied is None else result.with_meta(preprocess=applied)
                done[0] += one.grid.size

        group: list[tuple[int, _Pending]] = []  # images waiting to share batches

        def flush() -> None:
            if group:
                start = time.perf_counter()
                first = group[0][1]
                occluded, size = together(
                    forward,
                    [p.x_dev for _, p in group],
                    [p.fill_dev for _, p in group],
                    first.grid,
                    [p.score for _, p in group],
                    first.engine.batch_size,
                    report(done[0]),
                    numbers=[i for i, _ in group],  # their places in the caller's list, for messages
                )
                finish(list(group), occluded, size, "dense", {}, (time.perf_counter() - start) / len(group))
                group.clear()

        for i, (image, label, target) in enumerate(zip(images, labels, targets, strict=True)):
            one = _prepare(call, image, label, target)
            shares = one.engine.name == "dense" and not settings.fast and settings.budget is None
            if group and not (shares and one.x_dev.shape == group[0][1].x_dev.shape):
                flush()
            if shares:
                group.append((i, one))
                windows, size = len(group) * one.grid.size, one.engine.batch_size
                if windows % size == 0 or windows >= SHARED_BATCHES * size:  # full batches, or enough waiting
                    flush()
                continue
            start = time.perf_counter()
            occluded, size, used, notes = one.engine.run(
                forward,
                one.x_dev,
                one.fill_dev,
                one.grid,
                one.score,
                one.clean_scores,
                settings.fast,
                report(done[0]),
                start + settings.budget - one.seconds if settings.budget is not None else None,
            )
            finish([(i, one)], [occluded], size, used, notes, time.perf_counter() - start)
        flush()
    return results


def _prepare(call: _Call, image, label, target) -> _Pending:
    """``image`` read, run once unoccluded, its classes checked and an engine chosen for it."""
    start = time.perf_counter()
    settings, runner, output, names, plain = call.settings, call.runner, call.output, call.names, call.plain
    path = str(image) if isinstance(image, (str, os.PathLike)) else None
    if path is not None:
        image = read_image(image, max_pixels=call.max_pixels)
    given = frame = None  # a photo's size, and the part of it the model sees (targets with regions and boxes)
    if isinstance(image, Image.Image) and isinstance(call.model, LoadedModel):
        given, frame = (image.height, image.width), call.model.preprocess.crop_box(image.width, image.height)
    image = unwrap(call.model, image, output, call.max_pixels)[1]
    x = to_tensor(image)
    grid = Grid(x.shape[1], x.shape[2], settings.patch, settings.stride)
    x_here = x.to(runner.device)  # float32, as the fill is made
    x_dev = x_here.to(runner.dtype)  # the same tensor when the model is float32
    fill_dev = baseline(x_here, settings.fill, settings.seed).to(runner.dtype)
    per_image = None
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
        before = torch.cuda.memory_allocated(runner.device)
    try:
        clean_pass = lambda: call_model(plain, x_dev[None], "the unoccluded image")  # noqa: E731
        # engine="auto" reads the model's MACs: counted on this pass, once per model and shape
        raw = counted(call.bare, x_dev, clean_pass) if settings.engine == "auto" and call.torch_model else clean_pass()
    except torch.cuda.OutOfMemoryError:
        raise ModelError(f"out of memory on {runner.device} running the model on one image") from None
    except ModelError:
        if runner.channels is not None and runner.channels != x.shape[0]:
            raise ImageError(
                f"the image has {x.shape[0]} channel(s) but the model's first layer expects {runner.channels}; "
                f"convert the image (e.g. PIL's .convert('RGB') for a grayscale photo)"
            ) from None
        raise
    if runner.device.type == "cuda" and settings.batch_size is None:
        per_image = _memory_per_image(plain, x_dev, torch.cuda.max_memory_allocated(runner.device) - before)
    out = model_output(raw, 1)
    scores = out if isinstance(out, torch.Tensor) else None  # what the incremental engine's trace must reproduce
    clean = None  # class log-probabilities, when the model returns class scores (N x classes)
    classes = output not in NOT_CLASSES  # a declared regression's numbers, or detections: no class scores
    if classes and isinstance(out, torch.Tensor) and out.ndim == 2 and out.is_floating_point() and out.shape[1] >= 1:
        if output == "logits":
            _warn_if_probabilities(out)
        clean = log_probs(out, output)[0].numpy()
    elif label is not None:
        raise ConfigError(
            f"{option('label')} {shown(label)} is a class, but the model returned {returned(raw)}, not class scores "
            f"(an N x classes tensor); leave the label out",
            option="label", value=label, expected="no label for this model",
        )  # fmt: skip
    elif settings.all_classes:
        raise ConfigError(
            f"{option('all_classes')} keeps every class's map, but the model returned {returned(raw)}, not class "
            f"scores (an N x classes tensor); leave all_classes out",
            option="all_classes", value=True, expected="False for this model",
        )  # fmt: skip
    n_classes = 0 if clean is None else clean.shape[0]
    label = check_truth(label, n_classes, "label", names)
    truth = label if isinstance(label, tuple) else None  # a multi-label truth
    if truth is not None:
        label = None
        if output != "sigmoid":
            raise ConfigError(
                f"label={list(truth)} is a multi-label truth, but output={output!r} is a softmax over classes that "
                f"predicts one of them; give one label, or output='sigmoid' for a multi-label (sigmoid) head"
            )
    bound = as_target(target).bind(Clean(raw, clean, output, names, label, given, frame, tuple(x.shape[1:])))
    truths = [*([] if label is None else [label]), *(truth or ())]
    if bound.classes is not None:  # the target's classes first: they steer the approximate modes
        explained = list(dict.fromkeys([*bound.classes, *truths]))
        target = bound.classes[0]
    else:  # the target's sub-targets, by name, then the true classes
        explained = [*bound.names, *dict.fromkeys(truths)]
        target = as_target(target).spec() or bound.kind  # the default of a segmenter: "segment", every segment
    every = [k for k in range(n_classes) if k not in explained] if settings.all_classes else []
    keys = explained + every  # what each row of the occluded scores is: a class, or a sub-target's name
    score, clean_scores = _scorer(bound, keys, output, raw, clean)
    shared = grid.size * min(call.count, SHARED_BATCHES)  # the windows that may share batches
    numbers = scores.numel() if scores is not None else 0  # one image's output: dense for a segmenter
    size = settings.batch_size or auto_batch_size(shared, x_dev, runner.device, per_image, call.torch_model, numbers)
    anytime = settings.budget is not None
    first = first_windows(grid, COARSE if anytime else FACTOR) if anytime or settings.fast else None
    fixed = settings.batch_size is not None
    asked = "dense" if settings.engine == "auto" and not call.torch_model else settings.engine  # nothing to trace
    chosen = select(asked, call.bare, x_dev, grid, scores, size, fixed, settings.precision, settings.compile, first)
    return _Pending(
        x,
        path,
        x_dev,
        fill_dev,
        grid,
        clean,
        label,
        truth,
        target,
        explained,
        keys,
        score,
        clean_scores,
        chosen,
        time.perf_counter() - start,
        bound,
        list(bound.classes) if bound.classes is not None else list(bound.names),
    )


def _result(one: _Pending, occluded, size, used, notes, seconds, settings, runner, names) -> OcclusionResult:
    grid, clean, keys = one.grid, one.clean, one.keys
    maps = {k: ClassMap.compute(k, one.clean_scores[i], occluded[i], grid) for i, k in enumerate(keys)
            if k in one.explained}  # fmt: skip
    every = {}
    if settings.all_classes:  # δL = log P(occluded) - log P(clean), every class; the top class of each copy
        rows = {k: i for i, k in enumerate(keys)}
        by_class = occluded[[rows[k] for k in range(len(clean))]]
        shape = (grid.rows, grid.cols)
        every["all_delta"] = frozen_array((by_class - clean[:, None]).reshape(len(clean), *shape), np.float32)
        every["flip_map"] = frozen_array(np.argmax(by_class, axis=0).reshape(shape), np.int32)
    label, target, truth, bound = one.label, one.target, one.truth, one.bound
    share = floored(bound, np.asarray(occluded))
    if share > FLOOR_WARNING:
        warn(
            f"{share:.0%} of the occluded copies have no detection matching the box (s floored at log {EPSILON:g}): "
            f"the detector drops low scores itself (torchvision's box_score_thresh, 0.05 by default), so there "
            f"δL says only 'at least this much'; lower the detector's score threshold (a detector occlens builds by "
            f"name keeps scores down to 0.001)"
        )
    return OcclusionResult(
        predicted=None if clean is None else int(np.argmax(clean)),
        label=label,
        target=target,
        probabilities=None if clean is None else frozen_array(np.exp(clean)),
        grid=grid,
        settings=settings,
        target_map=maps[one.sub[0]],
        target_maps=tuple(maps[k] for k in one.sub),
        target_kind=bound.kind,
        target_info=tuple(dict(i) for i in bound.info),
        target_arrays={k: frozen_array(v, v.dtype) for k, v in bound.arrays.items()},
        label_map=None if label is None or label == target else maps[label],
        true_labels=truth,
        true_maps=tuple(maps[k] for k in truth or ()),
        device=str(runner.device),
        batch_size=size,
        engine=used,
        seconds=seconds,
        meta=notes,
        image=_frozen(one.x),
        labels=names,
        **every,
    )


def _scorer(bound: Bound, keys: list, output: str, raw, clean: np.ndarray | None) -> tuple[Score, np.ndarray]:
    """The score of every occluded copy, one column per key (a class's log-probability, or a sub-target of the
    bound target), and its values on the clean image (``raw``, the model's output on it)."""
    classes = [k for k in keys if not isinstance(k, str)]
    if bound.classes is not None:  # classes only: one log-softmax for them all
        return class_scores(classes, output), clean[classes]
    own = bound.score
    rest = class_scores(classes, output) if classes else None

    def score(out, n: int) -> np.ndarray:
        mine = np.asarray(own(out, n), dtype=np.float64).reshape(n, -1)
        return mine if rest is None else np.concatenate([mine, rest(out, n)], axis=1)

    return score, score(model_output(raw, 1), 1)[0]


def _per_image(images: list, label, target) -> tuple[list, list]:
    """One label and one target per image of the list ``images``: a list of them, or one value for all."""
    if not images:
        raise ConfigError("image is an empty list; give an image, or a list of images")
    nested = next((i for i, one in enumerate(images) if isinstance(one, list)), None)
    if nested is not None:  # what it is: not an image
        raise ImageError(
            f"image is a list holding a list (at position {nested}); a list gives several images: paths, PIL "
            f"images, numpy arrays or tensors (a nested list of pixels: pass np.array(...) of it)"
        )
    per = []
    for name, value in (("label", label), ("target", target)):
        if isinstance(value, list) and len(value) != len(images):
            raise ConfigError(
                f"{name} is a list of {len(value)} but there are {len(images)} images; give one {name} per image "
                f"(None where unknown), or one {name} (not a list) for all"
            )
        per.append(value if isinstance(value, list) else [value] * len(images))
    return per[0], per[1]


def named(result: OcclusionResult, model: LoadedModel, image: str | None, top_k: int = 5) -> OcclusionResult:
    """``result`` with the model's name, its weights if random, its preprocessing and class names in ``meta``
    (what the command's JSON records)."""
    names = model.labels
    return result.with_meta(
        model=model.name,
        **({"weights": "random"} if model.random_weights else {}),
        preprocess=record(model.preprocess, model.preprocess_from),
        image=image,
        predicted_name=None if result.predicted is None else names[result.predicted],
        label_name=None if result.label is None else names[result.label],
        target_name=names[result.target] if isinstance(result.target, int) else str(result.target),
        **({} if result.true_labels is None else {"true_label_names": [names[c] for c in result.true_labels]}),
        top_k=[{"class": c, "name": names[c], "probability": p} for c, p in result.top_k(max(top_k, 0))]
        if result.probabilities is not None
        else [],
    )


def _memory_per_image(forward, x: torch.Tensor, one: int) -> int | None:
    """CUDA bytes one more image costs: the peak of a batch of two minus ``one``, the batch of one's.

    The difference cancels what a forward pass allocates once whatever the batch (cuDNN's
    workspace, autocast's copies of the weights), which a single pass would count per image.
    None when even two images do not fit (the engine's out-of-memory back-off takes over).
    """
    device = x.device
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        call_model(forward, x[None].expand(2, *x.shape).contiguous(), "two unoccluded images")
    except torch.cuda.OutOfMemoryError:
        return None
    return max(torch.cuda.max_memory_allocated(device) - before - one, 0)


def _warn_if_probabilities(scores: torch.Tensor) -> None:
    s = scores.detach().to("cpu", torch.float64)
    sums = s.sum(dim=1)
    if (
        float(s.min()) >= 0.0
        and float(s.max()) <= 1.0
        and torch.allclose(sums, torch.ones_like(sums), atol=PROB_TOLERANCE)
    ):
        warn(
            "output='logits' but the model's scores look like probabilities (in [0, 1], summing to 1); "
            "pass output='probs' if the model ends in a softmax"
        )


def _frozen(x: torch.Tensor) -> np.ndarray:
    """A read-only float32 copy of the explained image, kept on the result for plotting."""
    a = x.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy().copy()
    a.flags.writeable = False
    return a
