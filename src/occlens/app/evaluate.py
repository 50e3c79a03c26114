"""The evaluate job (``occlens.evaluate``): deletion and insertion AUC per image and method, as a table, a
CSV and a PNG of curves."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analysis.metrics import deletion_auc, insertion_auc, random_map
from ..analysis.saliency import saliency
from ..core.errors import ConfigError, OcclensError
from ..core.files import atomic_write
from ..core.image import read_image
from ..core.settings import Settings
from ..explain import explain
from ..models.default import LoadedModel
from .outputs import file_stems, prepare_out

METHODS = ("occlusion", "saliency", "gradient_x_input", "random")
DEFAULT_METHODS = ("occlusion", "saliency", "random")
CSV_NAME, PNG_NAME = "evaluate.csv", "evaluate.png"
COLUMNS = ("image", "predicted", "predicted_name", "probability", "method", "first", "steps", "deletion_auc",
           "insertion_auc")  # fmt: skip


def check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """Method names (a comma-separated string or a sequence), de-duplicated, each one of :data:`METHODS`."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = tuple(dict.fromkeys(str(m).strip().lower() for m in items if str(m).strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ConfigError(f"unknown method {unknown[0] if unknown else methods!r}; use {', '.join(METHODS)}")
    return names


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_images` measured: one row per image and method, the images that failed, the files."""

    rows: tuple[dict, ...]
    methods: tuple[str, ...]
    errors: tuple[OcclensError, ...]
    csv: Path | None
    png: Path | None

    def __str__(self) -> str:
        return table(self.rows, self.methods) if self.rows else "no image could be evaluated"

    def __repr__(self) -> str:
        return f"Evaluation({len(self.rows)} rows, methods {', '.join(self.methods)}, {len(self.errors)} failed)"


def evaluate(
    images,
    out: str | os.PathLike | None = None,
    model=None,
    *,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    steps: int = 100,
    samples: bool = False,
    patch: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] | None = None,
    fill: str | float | tuple[float, ...] = "gray",
    seed: int = 0,
    batch_size: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    engine: str | None = None,
    fast: bool = False,
    budget: float | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
) -> Evaluation:
    """Deletion and insertion AUC of each method's map on each image: ``occlens evaluate`` in Python.

    ``images``: image files (one path or a list); ``samples=True`` adds the bundled photos. ``out``:
    where to write ``evaluate.csv`` and ``evaluate.png`` (None: nothing is written). ``model``: a
    :class:`~occlens.LoadedModel`, a spec, or None for the default model (loaded on ``device``).
    ``methods``: from :data:`METHODS`. The window settings are the occlusion map's
    (:func:`occlens.explain`). ``print(evaluation)`` shows the command's table.
    """
    from ..models.load import as_source, loaded

    paths = image_paths([images] if isinstance(images, (str, os.PathLike)) else images or (), samples)
    settings = Settings.build(patch, stride, fill, batch_size=batch_size, seed=seed, precision=precision,
                              compile=compile, engine=engine, fast=fast, budget=budget)  # fmt: skip
    methods = check_request(paths, methods, steps)  # before the model loads
    model = loaded(as_source(model), device)
    return evaluate_images(paths, None if out is None else Path(out), model, settings, methods, steps, max_pixels)


def image_paths(images, samples: bool) -> list[Path]:
    """The image files to evaluate: ``images``, then the bundled photos when ``samples``."""
    from ..core.samples import samples as bundled

    return [Path(p) for p in images] + ([s.path for s in bundled()] if samples else [])


def check_request(paths: Sequence[Path], methods: str | Sequence[str], steps: int) -> tuple[str, ...]:
    """Refuse an evaluation with no images or no steps; the methods, checked."""
    methods = check_methods(methods)
    if not paths:
        raise ConfigError("no images to evaluate; give IMAGE files, or --samples for the bundled photos")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    return methods


def evaluate_images(
    paths: Sequence[Path],
    out: Path | None,
    model: LoadedModel,
    settings: Settings,
    methods: Sequence[str] = DEFAULT_METHODS,
    steps: int = 100,
    max_pixels: int | None = None,
    on_error: Callable[[OcclensError], None] | None = None,
) -> Evaluation:
    """Score how faithful each method's map is on each image: deletion AUC (pixels removed to gray, most
    supporting first; lower is better) and insertion AUC (pixels revealed from a blurred copy; higher is
    better) of the predicted class's probability. With ``out``: writes OUT/evaluate.csv and
    OUT/evaluate.png (the curves). A bad image is skipped, its error passed to ``on_error`` at once and kept."""
    methods = check_request(paths, methods, steps)
    if out is not None:
        prepare_out(out)
    rows, curves, errors = [], [], []
    for path, stem in zip(paths, file_stems(paths), strict=True):
        try:
            image = model.preprocess(read_image(path, max_pixels=max_pixels))
            per_method = [(m, *evaluate_image(model, image, m, settings, steps)) for m in methods]
        except OcclensError as err:
            errors.append(err)
            if on_error is not None:
                on_error(err)
            continue
        curves.append((stem, per_method))
        for method, first, deletion, insertion, probability in per_method:
            rows.append({
                "image": stem, "predicted": deletion.cls, "predicted_name": model.labels[deletion.cls],
                "probability": probability, "method": method, "first": first, "steps": steps,
                "deletion_auc": deletion.auc, "insertion_auc": insertion.auc,
            })  # fmt: skip
    csv_path = png_path = None
    if rows and out is not None:
        csv_path, png_path = write_csv(rows, out / CSV_NAME), write_png(curves, model.labels, out / PNG_NAME)
    return Evaluation(tuple(rows), methods, tuple(errors), csv_path, png_path)


def evaluate_image(model: LoadedModel, image, method: str, settings: Settings, steps: int):
    """``(first, deletion curve, insertion curve, P(Q))`` of one method's map on one image."""
    if method == "occlusion":  # with the job's window, fill, precision and compile settings
        result = explain(model, image, **settings.arguments())
        pixel_map, first = result.pixel_map, "lowest"  # δL < 0 supports Q
    elif method == "random":
        pixel_map, first = random_map(image.shape[1], image.shape[2], settings.seed), "highest"
    else:
        kind = "gradient" if method == "saliency" else method
        pixel_map, first = saliency(model.module, image, method=kind, output=model.output), "highest"
    deletion = deletion_auc(model.module, image, pixel_map, first=first, steps=steps, output=model.output,
                            batch_size=settings.batch_size)  # fmt: skip
    insertion = insertion_auc(model.module, image, pixel_map, first=first, steps=steps, output=model.output,
                              batch_size=settings.batch_size)  # fmt: skip
    return first, deletion, insertion, float(insertion.scores[-1])


def write_csv(rows: list[dict], path: Path) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def table(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """A Markdown table: one line per image and method, then the mean over images per method."""
    lines = [
        "| image | predicted Q (p) | method | deletion AUC ↓ | insertion AUC ↑ |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        q = f"{r['predicted_name']} ({r['probability']:.2f})"
        lines.append(f"| {r['image']} | {q} | {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} |")
    images = len({r["image"] for r in rows})
    if images > 1:
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            deletion = sum(r["deletion_auc"] for r in mine) / len(mine)
            insertion = sum(r["insertion_auc"] for r in mine) / len(mine)
            lines.append(f"| **mean of {images}** | | {m} | {deletion:.3f} | {insertion:.3f} |")
    return "\n".join(lines)


def write_png(curves, labels: Sequence[str], path: Path) -> Path:
    """One row per image: deletion curves left, insertion curves right, one line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2 * len(curves) + 0.4), layout="constrained")
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for (stem, per_method), row in zip(curves, axes, strict=True):
        for method, _, deletion, insertion, _ in per_method:
            for ax, curve in zip(row, (deletion, insertion), strict=True):
                ax.plot(curve.fractions, curve.scores, label=f"{method} (AUC {curve.auc:.3f})")
        name = labels[per_method[0][2].cls]
        for ax, what in zip(row, ("deletion (to gray): lower AUC is better",
                                  "insertion (from blur): higher AUC is better"), strict=True):  # fmt: skip
            ax.set_title(f"{stem}: {what}", fontsize=9, parse_math=False)
            ax.set_xlabel("fraction of pixels changed, most supporting first", fontsize=8)
            ax.set_ylabel(f"P(y = {name})", fontsize=8, parse_math=False)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=8)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return atomic_write(path, lambda f: f.write(png.getvalue()))
