"""The evaluate job (``occlens.evaluate``): how faithful each method's map is, per image and over the images.

Per image and method: the MoRF and LeRF curves of the explained class's probability under one removal
strategy, removing pixels or the occlusion grid's windows, their areas and SRG = AUC(LeRF) - AUC(MoRF)
(:func:`occlens.metrics.removal_curves`). Over the images: per method the mean of each score with a
bootstrap 95% interval, and per pair of methods the mean paired difference, its interval and a paired
sign-flip test (:mod:`occlens.analysis.statistics`). Files: ``evaluate.csv`` (per image and method),
``summary.csv`` (over the images) and ``evaluate.png`` (intervals and curves), each written atomically.

The images are files, or those of a dataset run's DIR (``occlens run``): then the occlusion maps are the
ones the run wrote (``DIR/images/STEM.npz``, nothing is recomputed), each scored for the class the run
explained, and ``granularity="window"`` removes the run's windows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..analysis.metrics import RemovalCurves, random_map, removal_curves
from ..analysis.saliency import saliency
from ..analysis.statistics import bootstrap_interval, paired_test
from ..core.checks import DEFAULT_REMOVAL, DEFAULT_STEPS, check_path
from ..core.errors import ConfigError, OcclensError
from ..core.grid import Grid
from ..core.image import read_image
from ..core.progress import Bar
from ..core.result import OcclusionResult
from ..core.settings import Settings, settings_with
from ..explanation import explain
from ..models.loaded import LoadedModel
from ..models.recognise import with_preprocess
from .evaluate_report import table, write_csv, write_png, write_summary
from .faithfulness import (  # noqa: F401 (the options' old home)
    DEFAULT_BOOTSTRAP,
    DEFAULT_GRANULARITY,
    DEFAULT_METHODS,
    GRANULARITIES,
    METHODS,
    Scoring,
    check_granularity,
    check_methods,
)
from .outputs import file_stems, prepare_out

if TYPE_CHECKING:
    import torch

SCORES = ("srg", "morf_auc", "lerf_auc")  # higher, lower, higher is better
CSV_NAME, SUMMARY_NAME, PNG_NAME = "evaluate.csv", "summary.csv", "evaluate.png"
RECORDED_P_TOLERANCE = 0.01  # a run's image whose P(class) moved more than this was changed since the run
Scored = tuple[str, str, int, float, RemovalCurves]  # one method on one image: method, first, Q, P(Q), curves


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_images` measured: one row per image and method, the summary over the images
    (one row per score and method, and per score and pair of methods), the images that failed, the files."""

    rows: tuple[dict, ...]
    summary: tuple[dict, ...]
    scoring: Scoring
    errors: tuple[OcclensError, ...]
    csv: Path | None
    summary_csv: Path | None
    png: Path | None

    @property
    def methods(self) -> tuple[str, ...]:
        return self.scoring.methods

    def __str__(self) -> str:
        return table(self.rows, self.summary, self.scoring) if self.rows else "no image could be evaluated"

    def __repr__(self) -> str:
        return f"Evaluation({len(self.rows)} rows, methods {', '.join(self.methods)}, {len(self.errors)} failed)"


def evaluate(
    images: str | os.PathLike | Iterable[str | os.PathLike] | None,
    out: str | os.PathLike | None = None,
    model: LoadedModel | str | os.PathLike | None = None,
    *,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    removal: str = DEFAULT_REMOVAL,
    granularity: str = DEFAULT_GRANULARITY,
    steps: int = DEFAULT_STEPS,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    samples: bool = False,
    patch: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    fill: str | float | tuple[float, ...] = "gray",
    seed: int = 0,
    batch_size: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    engine: str = "auto",
    fast: bool = False,
    budget: float | None = None,
    preprocess: str | dict | object | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    settings: Settings | None = None,
) -> Evaluation:
    """How faithful each method's map is on each image, and over the images: ``occlens evaluate`` in Python.

    ``images``: image files (one path or a list), or the DIR of a dataset run (its maps are used as they
    are); ``samples=True`` adds the bundled photos. ``out``: where to write ``evaluate.csv``,
    ``summary.csv`` and ``evaluate.png`` (None: nothing is written). ``model``: a
    :class:`~occlens.LoadedModel`, a spec, or None for the default model (loaded on ``device``); for a
    run's DIR, the run's model. ``methods``: from :data:`METHODS`. ``removal``: ``"gray"``, ``"blur"`` or
    ``"road"``; ``granularity``: ``"window"`` (the occlusion windows) or ``"pixel"``; ``steps`` per curve;
    ``bootstrap``: resamples of the 95% intervals (0: none); ``seed``: of the random map, ROAD's noise and
    the resampling. The window settings and ``preprocess`` are the occlusion map's (:func:`occlens.explain`;
    ``settings``: an :class:`occlens.Settings` holding them, which keywords other than their defaults override).
    ``progress``: a bar of the maps scored (images x methods): None (default), when someone watches (a
    notebook, or stderr a terminal); True, always; False, never. ``print(evaluation)`` shows the command's
    tables.
    """
    from ..models.source import as_source, loaded

    paths = image_paths(_files(images), samples)
    settings = settings_with(settings, patch=patch, stride=stride, fill=fill, batch_size=batch_size, seed=seed,
                           precision=precision, compile=compile, engine=engine, fast=fast, budget=budget,
                           preprocess=preprocess)  # fmt: skip
    scoring = Scoring(cast("tuple[str, ...]", methods), removal, granularity, steps, bootstrap)  # checked, made a tuple
    check_request(paths, scoring)  # before the model loads
    model = loaded(as_source(model), device)
    return evaluate_images(
        paths, None if out is None else Path(out), model, settings, scoring, max_pixels, progress=progress
    )


def _files(images: object) -> list[Path]:
    """``evaluate``'s ``images``, checked: a path, a list of paths, or None (none, with ``samples``)."""
    if images is None:
        return []
    one = isinstance(images, (str, os.PathLike)) or hasattr(images, "shape")  # an array or tensor: one (refused)
    many = list(images) if isinstance(images, Iterable) and not one else [images]
    expected = "image files (a path, or a list of paths) or a run's DIR"
    fix = "evaluate reads files: save arrays as images first, or score them with occlens.metrics"
    return [check_path(p, "images", expected, fix) for p in many]


def image_paths(images: Iterable[str | os.PathLike], samples: bool) -> list[Path]:
    """The image files to evaluate: ``images``, then the bundled photos when ``samples``."""
    from ..core.samples import samples as bundled

    return [Path(p) for p in images] + ([s.path for s in bundled()] if samples else [])


def check_request(paths: Sequence[Path], scoring: Scoring) -> None:
    """Refuse an evaluation with no images, or a folder that is not a run's DIR, or a DIR mixed with images."""
    from .manifest import FILE

    if not isinstance(scoring, Scoring):
        raise ConfigError(f"scoring must be a Scoring, got {type(scoring).__name__}")
    if not paths:
        raise ConfigError("no images to evaluate; give IMAGE files, a run's DIR, or --samples for the bundled photos")
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1:
        raise ConfigError(
            f"{folders[0]} is a folder, given with {len(paths) - 1} other input(s); give image files, or one "
            f"run's DIR on its own"
        )
    if folders and not (folders[0] / FILE).is_file():
        raise ConfigError(
            f"{folders[0]} is a folder but not a dataset run's DIR (no {FILE}); give image files, or the DIR "
            f"of an `occlens run`"
        )


@dataclass(frozen=True)
class EvalItem:
    """One image to evaluate: its output name, its file, and for a run's image the run's saved result."""

    stem: str
    path: Path
    result: Path | None = None  # DIR/images/STEM of a run


def evaluate_images(
    paths: Sequence[Path],
    out: Path | None,
    model: LoadedModel,
    settings: Settings,
    scoring: Scoring = Scoring(),
    max_pixels: int | None = None,
    on_error: Callable[[OcclensError], None] | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Score how faithful each method's map is on each image (:mod:`occlens.app.evaluate`), and summarise
    over the images. With ``out``: writes OUT/evaluate.csv, OUT/summary.csv and OUT/evaluate.png. A bad
    image is skipped, its error passed to ``on_error`` at once and kept. ``progress``: the bar of the maps
    scored, one step per image and method (:mod:`occlens.core.progress`)."""
    check_request(paths, scoring)
    model = with_preprocess(model, settings.preprocess)
    if paths[0].is_dir():
        items = run_items(paths[0], model)
    else:
        items = [EvalItem(stem, p) for p, stem in zip(paths, file_stems(paths), strict=True)]
    if out is not None:
        prepare_out(out)
    rows, curves, errors = [], [], []
    methods = len(scoring.methods)
    with Bar(progress, "maps", "evaluate", len(items) * methods) as bar:
        for number, item in enumerate(items):
            try:
                scored = evaluate_item(model, item, settings, scoring, max_pixels, bar.step)
            except OcclensError as err:
                bar.step(ok=False, n=(number + 1) * methods - bar.done)  # the image's maps left: passed
                errors.append(err)
                if on_error is not None:
                    on_error(err)
                continue
            curves.append((item.stem, scored))
            rows += [row_of(item.stem, model, scoring, *s) for s in scored]
    summary = summarize_scores(rows, scoring, settings.seed)
    csv_path = summary_path = png_path = None
    if rows and out is not None:
        csv_path, summary_path = write_csv(rows, out / CSV_NAME), write_summary(summary, out / SUMMARY_NAME)
        png_path = write_png(curves, rows, summary, model.labels, scoring, out / PNG_NAME)
    return Evaluation(tuple(rows), summary, scoring, tuple(errors), csv_path, summary_path, png_path)


def evaluate_item(model: LoadedModel, item: EvalItem, settings: Settings, scoring: Scoring, max_pixels: int | None,
                  step: Callable[[], None] | None = None) -> list[Scored]:  # fmt: skip
    """``[(method, first, predicted, P(predicted), curves)]`` for one image, each method in turn (``step()``
    called after each)."""
    image = model.preprocess(read_image(item.path, max_pixels=max_pixels))
    height, width = image.shape[1:]
    saved = None if item.result is None else OcclusionResult.load(item.result)
    if saved is not None and (saved.grid.height, saved.grid.width) != (height, width):
        raise ConfigError(
            f"{item.result}: the run's map is {saved.grid.height}x{saved.grid.width} but the model's input is "
            f"{height}x{width}; evaluate a run with the model (and --input-size) it was made with"
        )
    grid = saved.grid if saved is not None else window_grid(model, settings, height, width)
    target = None if saved is None else saved.target
    scored = []
    for method in scoring.methods:
        pixel_map, first = method_map(model, image, method, settings, target, saved)
        segments = grid if scoring.granularity == "window" else None
        curves = removal_curves(model.module, image, pixel_map, first=first, removal=scoring.removal, segments=segments,
                                steps=scoring.steps, target=target, seed=settings.seed, output=model.output,
                                batch_size=settings.batch_size)  # fmt: skip
        scored.append((method, first, curves))
        if step is not None:
            step()
    clean = float(scored[0][2].morf.scores[0])  # P(class | image), the curves' start
    if saved is not None:
        recorded = float(saved.probabilities[saved.target])
        if abs(clean - recorded) > RECORDED_P_TOLERANCE:
            raise ConfigError(
                f"{item.path}: the model gives class {saved.target} probability {clean:.4f}, the run recorded "
                f"{recorded:.4f}; the image or the model changed since the run, so its map is stale"
            )
        return [(m, f, saved.predicted, float(saved.probabilities[saved.predicted]), c) for m, f, c in scored]
    cls = scored[0][2].morf.cls  # the prediction Q
    return [(m, f, cls, clean, c) for m, f, c in scored]


def window_grid(model: LoadedModel, settings: Settings, height: int, width: int) -> Grid:
    """The occlusion windows of an image: the settings' patch, or where none was given, the model's own window
    as :func:`occlens.explain` resolves it (``Settings.for_model``)."""
    if settings.patch is None:
        settings = settings.for_model(getattr(model, "patch", None))
    return Grid.build(height, width, settings.patch, settings.stride)


def method_map(
    model: LoadedModel,
    image: torch.Tensor,
    method: str,
    settings: Settings,
    target: int | str | None,
    saved: OcclusionResult | None,
) -> tuple[np.ndarray, str]:
    """``(H x W map, first)`` of one method: ``first`` says which end of the map supports the class."""
    if method == "occlusion":
        if saved is not None:  # the run's own map, as it was written
            return saved.pixel_map, "lowest"
        # δL < 0 supports; evaluate's own bar counts the maps
        result = explain(model, image, target=target, settings=settings, progress=False)
        return result.pixel_map, "lowest"
    if method == "random":
        return random_map(image.shape[1], image.shape[2], settings.seed), "highest"
    kind = "gradient" if method == "saliency" else method
    return saliency(model.module, image, target, method=kind, output=model.output), "highest"


def row_of(
    stem: str,
    model: LoadedModel,
    scoring: Scoring,
    method: str,
    first: str,
    predicted: int,
    probability: float,
    c: RemovalCurves,
) -> dict[str, Any]:
    return {
        "image": stem, "predicted": predicted, "predicted_name": model.labels[predicted], "probability": probability,
        "target": c.morf.cls, "method": method, "first": first, "removal": c.removal,
        "granularity": scoring.granularity, "steps": len(c.morf.fractions) - 1,
        "morf_auc": c.morf.auc, "lerf_auc": c.lerf.auc, "srg": c.srg,
    }  # fmt: skip


def summarize_scores(rows: Sequence[dict], scoring: Scoring, seed: int = 0) -> tuple[dict, ...]:
    """Per score: each method's mean over the images with its bootstrap interval, then each pair of methods'
    mean paired difference (first minus second) with its interval and the paired sign-flip test's p."""
    if not rows:
        return ()
    out = []
    for score in SCORES:
        values = {m: np.array([r[score] for r in rows if r["method"] == m]) for m in scoring.methods}
        for m, v in values.items():
            low, high = bootstrap_interval(v, scoring.bootstrap, seed)
            out.append(summary_row(score, m, "", v, low, high, None))
        for a, b in itertools.combinations(scoring.methods, 2):
            d = values[a] - values[b]
            low, high = bootstrap_interval(d, scoring.bootstrap, seed)
            p = paired_test(values[a], values[b], scoring.bootstrap, seed)
            out.append(summary_row(score, a, b, d, low, high, p))
    return tuple(out)


def summary_row(
    score: str, method: str, versus: str, values: np.ndarray, low: float, high: float, p: float | None
) -> dict[str, Any]:
    return {"score": score, "method": method, "versus": versus, "images": len(values), "mean": float(values.mean()),
            "ci_low": low, "ci_high": high, "p_value": p}  # fmt: skip


def run_items(folder: Path, model: LoadedModel) -> list[EvalItem]:
    """The explained images of the run in ``folder``, in key order; refused for another model than the run's."""
    from .dataset import Dataset
    from .fingerprint import run_settings
    from .folders import IMAGES
    from .manifest import Manifest
    from .options import Options

    with Manifest(folder) as manifest:
        stored, records = manifest.settings(), manifest.records()
    if stored is None or "model" not in stored:
        raise ConfigError(f"{folder} holds no recorded run (its manifest has no settings); run `occlens run` first")
    ours = run_settings(Dataset(Path(stored.get("dataset", ".")), "", ()), model, Settings(), Options())
    if ours["model"] != stored["model"]:
        raise ConfigError(
            f"{folder} was explained with another model than {model.name} (its file, weights, preprocessing, output "
            f"or class names differ); give evaluate the run's --model, --weights and --model-config"
        )
    items = [EvalItem(r.stem, Path(r.path), folder / IMAGES / r.stem) for r in records.values() if r.ok]
    if not items:
        raise ConfigError(f"{folder} has no explained images yet; let its run finish some first")
    return items
