"""One image's job: decode, explain with the job's settings, write its files.

``occlens explain`` and ``occlens demo`` run it on files into one flat folder
(:func:`explain_files`); dataset runs (:mod:`occlens.app.runs`, :mod:`occlens.app.cluster`) run
:func:`process` on each :class:`Job`, which depends on nothing but its arguments, so any scheduler can
run it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.saliency import saliency_rows
from ..core.checks import is_bands
from ..core.errors import OcclensError, either, one_line
from ..core.files import printable
from ..core.grid import Grid
from ..core.records import Record
from ..core.result import OcclusionResult
from ..core.settings import Settings
from ..core.volume import Volume
from ..explanation import explain
from ..models.loaded import LoadedModel
from ..models.recognise import with_preprocess
from ..volumes import is_declared, windows_for_image
from .manifest import now
from .options import Options
from .outputs import file_stems, prepare_out, write_outputs
from .per_file import explain_each, unwritable
from .workers import decode_image, write_run  # noqa: F401 (process's steps; the workers run them too)


@dataclass(frozen=True)
class Job:
    """One image of a dataset run: its key in the manifest, its file, its true class (a tuple of classes: a
    multi-label truth), its output stem."""

    key: str
    path: Path
    label: int | tuple[int, ...] | None
    stem: str
    target: int | None = None  # the class to explain for this image (the dataset's target column), else --target


def explain_image(
    model: LoadedModel,
    image: np.ndarray | torch.Tensor | Volume,
    label: int | str | tuple | None,
    path: Path,
    settings: Settings,
    options: Options,
    decode_s: float = 0.0,
    progress=False,
    target: int | None = None,
) -> OcclusionResult:
    """:func:`occlens.explain` on one decoded image (or a :class:`~occlens.core.volume.Volume`: the viewer's) with
    the job's settings, its file and timings in ``meta``; ``target``: this image's class to explain (None: the
    options' target, else the prediction); ``progress``: explain's (default: no bar; a dataset run's bar counts
    images)."""
    start = time.perf_counter()
    image = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    target = options.target if target is None else target
    result = explain(model, image, label, target=target, top_k=options.top_k, progress=progress, settings=settings)
    total = decode_s + time.perf_counter() - start
    return result.with_meta(image=str(path), timings={"explain_s": result.seconds, "total_s": total})


def process(job: Job, model: LoadedModel, settings: Settings, options: Options, images: Path) -> Record:
    """The whole work for one image: decode, explain, write its files under ``images`` (a dataset run's:
    :func:`occlens.app.outputs.write_run_outputs`); a bad image gives a failed Record. A volume (a NIfTI file, a
    DICOM folder): :func:`process_volume`."""
    if is_declared(job.path):
        return process_volume(job, model, settings, options, images)
    try:
        image, seconds = decode_image(job.path, model.preprocess, options.max_pixels)
        result = explain_image(model, image, job.label, job.path, settings, options, seconds, target=job.target)
        write_run(result, model.labels, images / job.stem, options)
    except (OcclensError, OSError) as err:  # a bad image, or outputs the filesystem refuses: this image fails
        return failed(job, err)
    return record_of(job, result)


def process_volume(job: Job, model: LoadedModel, settings: Settings, options: Options, images: Path) -> Record:
    """:func:`process` for a volume: read (with ``options.intensity``), explain, write its run files
    (:func:`occlens.app.volume_files.write_volume_run`: STEM.json, .npz, .jpg, .nii.gz and the figure)."""
    from .volume_files import read_and_explain, write_volume_run

    try:
        start = time.perf_counter()
        given, result = read_and_explain(model, job.path, job.label, settings, options, job.target)
        result = result.with_meta(timings={"explain_s": result.seconds, "total_s": time.perf_counter() - start})
        write_volume_run(result, given, images / job.stem, options.figures)
    except (OcclensError, OSError) as err:
        return failed(job, err)
    return record_of(job, result)


def record_of(job: Job, result: OcclusionResult) -> Record:
    p, meta = result.probabilities, result.meta
    several = result.true_labels is not None
    names = meta.get("true_label_names")
    return Record(
        key=job.key,
        path=printable(str(job.path)),
        stem=job.stem,
        status="ok",
        label=result.label,
        label_name=";".join(names) if several and names else meta.get("label_name"),
        predicted=result.predicted,
        # no Q (a model without class scores): what the maps explain, in words, for the report's gallery
        predicted_name=meta.get("predicted_name") if result.predicted is not None else target_words(result),
        # a model without class scores (a segmenter, a detector, a regression) has no Q and no P (core.result)
        confidence=None if p is None or result.predicted is None else float(p[result.predicted]),
        label_probability=None if p is None or result.label is None else float(p[result.label]),
        loss=float(result.loss),
        seconds=float(meta.get("timings", {}).get("total_s", result.seconds)),
        finished=now(),
        true_labels=result.true_labels,
        # a sigmoid head's predicted labels, for every image (an unlabelled one of a multi-label run, too)
        predicted_labels=result.predicted_labels if several or result.settings.output == "sigmoid" else None,
    )


def target_words(result: OcclusionResult) -> str:
    """What a result's maps explain, in a few words, for a model without class scores: ``segments: person, car``,
    ``boxes: 3 (car, dog)``, ``regression: output 0 = 1.23`` (``s = y``: minus the loss), else the target."""
    kind, subs = result.target_kind, result.sub_targets
    info = result.target_info or ({},) * len(subs)
    if kind == "segment":
        named = (str(i.get("class_name") or i.get("class", n)) for i, n in zip(info, subs, strict=False))
        return "segments: " + ", ".join(named)
    if kind == "box":
        named = sorted({str(i.get("class_name") or i.get("class")) for i in info if i.get("class") is not None})
        return f"boxes: {len(subs)}" + (f" ({', '.join(named)})" if named else "")
    if kind == "regression":
        return "regression: " + ", ".join(f"{n} = {-m.loss:.4g}" for n, m in zip(subs, result.target_maps, strict=True))
    return f"{kind}: " + ", ".join(subs)


def failed(job: Job, err: BaseException) -> Record:
    # kept in the manifest, read by a Python caller or the command: options named both ways
    error = one_line(err.render(either) if isinstance(err, OcclensError) else unwritable(err))
    several = isinstance(job.label, tuple)
    return Record(job.key, printable(str(job.path)), job.stem, "failed", label=None if several else job.label,
                  error=error, finished=now(), true_labels=job.label if several else None)  # fmt: skip


def check_windows_fit(model: LoadedModel, settings: Settings) -> None:
    """Refuse, before any image, windows that do not fit the model's input (every image is resized to it)."""
    settings = settings.for_model(model.patch)
    Grid.build(*model.preprocess.size, settings.patch, settings.stride)


def explain_files(
    model: LoadedModel,
    files: Sequence[tuple[Path, int | str | None]],
    out: Path,
    settings: Settings,
    options: Options,
    on_error: Callable[[OcclensError], None] | None = None,
) -> tuple[list[tuple[str, OcclusionResult]], list[OcclensError]]:
    """Explain each ``(path, label)`` into ``out/STEM.png|.json|.npz`` (``occlens explain``'s files); volumes and
    band occlusion into their own (:mod:`occlens.app.volume_files`, read with ``options.intensity``).

    A bad image is skipped, its error passed to ``on_error`` at once and returned with the others:
    ``(rows of (stem, result), errors)``.
    """
    if is_bands(settings.patch) or any(is_declared(p) for p, _ in files):  # volumes, band occlusion: their own files
        from .volume_files import explain_volume_files

        return explain_volume_files(model, files, out, settings, options, on_error)
    windows_for_image(settings)
    model = with_preprocess(model, settings.preprocess)
    check_windows_fit(model, settings)
    prepare_out(out)

    def explain_one(path: Path, label, stem: str, bar) -> OcclusionResult:
        image, seconds = decode_image(path, model.preprocess, options.max_pixels)
        result = explain_image(model, image, label, path, settings, options, seconds, bar)
        compare = None
        if options.compare:
            compare = saliency_rows(model.module, torch.from_numpy(image), result, output=model.output)
        write_outputs(result, result.image, model.labels, out / stem, options.also_true_class or None, compare)
        return result

    return explain_each(files, file_stems([p for p, _ in files]), options.progress, explain_one, on_error)
