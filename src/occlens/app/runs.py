"""Dataset runs: explain a whole dataset, resumably, and write a browsable report (``occlens.run``).

Layout of DIR: ``images/STEM.json|.npz|.jpg`` per image (the result in the compact form and the
preview; ``STEM.png``, the figure, where ``figures`` asks for one; STEM is the image's path in the
dataset without its suffix, :mod:`occlens.app.outputs`), ``manifest.sqlite`` (see
:mod:`occlens.app.manifest`) and ``report/index.html``.

The work per image is :func:`occlens.app.job.process`; it depends on nothing but its arguments, so any
scheduler can run it: :mod:`occlens.app.pipeline` on this machine (worker processes decode ahead and
write behind, the model runs in this process), or with ``ray=True`` :mod:`occlens.app.cluster` on Ray
workers, on the same terms. Either way this process alone records finished images in the manifest, each
*after* its files are written (:mod:`occlens.app.recording`): killed at any moment, a re-run finds every
recorded image whole and redoes the rest. The report is rewritten while the run goes on and at the end.

What the outputs depend on is the run's fingerprint (:mod:`occlens.app.fingerprint`): a DIR made with
other values of those is refused (or, with ``force``, started over).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..core.checks import check_path, is_bands
from ..core.errors import ConfigError, option, shown
from ..core.progress import Bar
from ..core.records import Record, Summary
from ..core.settings import Settings, settings_with
from ..core.source import ModelSource, spec_source
from .dataset import Dataset, list_dataset
from .fingerprint import FINGERPRINT, run_request, run_settings
from .folders import IMAGES, discard, files_under, finished
from .manifest import FILE, Manifest, changes
from .options import MIN_JOBS_PER_WORKER, Options
from .outputs import output_stems, prepare_out, remove_temporary
from .recording import Recorder, Reporter
from .summary import explained_words, sign_note, summarize_run, summary_text
from .workers import WORKER_OF

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

# torch, the model and the worker processes load only for work to do: a finished run answers from its
# manifest without them (answered)


@dataclass(frozen=True)
class RunReport:
    """What :func:`run` did: the summary of DIR's images, the report's index page, this call's share."""

    out: Path
    summary: Summary
    index: Path
    done_now: int
    seconds: float
    explained: str = "the prediction"  # what the maps speak of, in words (app.summary.explained_words)

    def __str__(self) -> str:
        report = f"report: {self.index}  {sign_note(self.explained)}"
        return f"{summary_text(self.summary, self.done_now, self.seconds)}\n{report}"

    def __repr__(self) -> str:
        s = self.summary
        accuracy = "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%"
        return (
            f"RunReport({str(self.out)!r}: {s.explained} of {s.images} images explained ({self.done_now} now), "
            f"{len(s.failed)} failed, accuracy {accuracy}, report {str(self.index)!r})"
        )


def run(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    model=None,
    *,
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
    all_classes: bool = False,
    threshold: float = 0.5,
    preprocess: str | dict | object | None = None,
    target: int | str | None = None,
    top_k: int = 5,
    also_true_class: bool = False,
    max_pixels: int | None = None,
    workers: int | None = None,
    force: bool = False,
    ray: bool = False,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    device: str | None = None,
    figures: str = "mistakes",
    shared_fs: bool = False,
    progress: bool | None = None,
    settings: Settings | None = None,
    intensity: str | tuple[float, float] | dict | None = None,
) -> RunReport:
    """Explain a dataset, resumably, into ``out`` with a browsable report: ``occlens run`` in Python.

    ``dataset``: an ImageFolder folder (one sub-folder per class), a CSV with ``path,label`` columns, or
    a plain folder of images. ``out``: the run's folder; the same folder resumes the run (a run the
    command started, too), and a finished run asked for again the same way answers from its manifest without
    loading the model (``docs/resuming-runs.md``). ``model``: a :class:`~occlens.LoadedModel`, a spec (``"default"``,
    ``"timm:NAME"``, a file), or None for the default model. The window settings are
    :func:`occlens.explain`'s, and so is ``preprocess`` (in place of the model's own); ``target``, ``top_k``,
    ``also_true_class``, ``max_pixels``, ``workers``, ``force``, ``figures``, ``ray``, ``address``,
    ``gpus_per_worker``, ``shared_fs`` are the command's flags of the same names (``occlens run --help``);
    ``device`` is where a spec is loaded (and, with ``ray``, where the workers run it). ``progress``: a bar of
    the images done (the workers' and Ray's too), with their rate and the time left: None (default), when
    someone watches (a notebook, or stderr a terminal); True, always; False, never, and no notes on stderr
    either (the command's ``-q``). ``settings``: an :class:`occlens.Settings` holding the window settings at
    once (keywords given beside it, other than their defaults, override it). A dataset of volumes (NIfTI files, a
    CSV naming them or DICOM series folders) is explained with a volume model, one volume at a time in this
    process, each read with ``intensity`` (:func:`occlens.read_volume`'s: a CT preset, ``"mr"``, ``(low, high)``;
    None: already in [0, 1]); each writes its voxel map as ``images/STEM.nii.gz`` too (``docs/volumes.md``).
    Returns a :class:`RunReport`;
    ``print(report)`` shows the summary the command prints.
    """
    call = "occlens.run(DATASET, OUT, model=MODEL)"
    dataset = check_path(dataset, "dataset", "a folder of images or a CSV file (its path)", call)
    out = check_path(out, "out", "the run's folder (its path)", call)
    if os.environ.get(WORKER_OF) == str(os.getppid()):  # a pipeline worker starting runs the caller's script again
        raise SystemExit(
            "occlens: error: occlens.run is being called again in one of its worker processes, which start by "
            'running your script; put the call under `if __name__ == "__main__":`, or pass workers=0'
        )
    settings = settings_with(settings, patch=patch, stride=stride, fill=fill, batch_size=batch_size, seed=seed,
                           precision=precision, compile=compile, engine=engine, fast=fast, budget=budget,
                           all_classes=all_classes, threshold=threshold, preprocess=preprocess)  # fmt: skip
    options = Options(target=target, top_k=top_k, also_true_class=also_true_class, max_pixels=max_pixels,
                      workers=workers, force=force, ray=ray, address=address, gpus_per_worker=gpus_per_worker,
                      device=device, figures=figures, shared_fs=shared_fs, progress=progress,
                      intensity=intensity)  # fmt: skip
    source: LoadedModel | ModelSource | None = spec_source(model)  # a spec: no torch yet (a finished run needs none)
    if source is None:
        from ..models.source import as_source

        source = as_source(model)
    return run_dataset(dataset, out, source, settings, options)


def run_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | ModelSource,
    settings: Settings,
    options: Options,
    log: TextIO | None = None,
) -> RunReport:
    """Explain every image of ``dataset`` into ``out/images/``, record each in ``out/manifest.sqlite``,
    write ``out/report/index.html``. Re-running with the same ``out`` skips finished images; a run with every
    image finished and asked for again the same way answers from its manifest, without loading the model
    (:func:`answered`).

    ``model``: a :class:`LoadedModel`, or the :class:`ModelSource` of one, loaded once the options and
    the dataset are checked (on ``options.device``; with ``options.ray`` on the CPU: the driver's copy,
    for the class names, the preprocessing and the fingerprint, while the workers load their own).
    Lines about the run go to ``log`` (default: stderr), none with ``options.progress`` False; the bar of
    the images done is ``options.progress``'s (:mod:`occlens.core.progress`).
    """
    from .cluster import check_options

    log = sys.stderr if log is None else log
    out = Path(out)
    if is_bands(settings.patch):
        raise ConfigError(f"{option('patch')} {shown(settings.patch)} is band occlusion, which dataset runs do not do "
                          f"yet; explain each image with occlens explain IMAGE --patch ... (occlens.explain), or give "
                          f"a spatial window", option="patch", value=settings.patch)  # fmt: skip
    check_options(options, model if isinstance(model, ModelSource) else model.source)
    data = list_dataset(Path(dataset).absolute(), exclude=out)
    for folder in (IMAGES, "report"):
        if (out / folder).exists() and not (out / folder).is_dir():
            raise ConfigError(f"{out / folder} is a file, where the run keeps its {folder}; use another --out")
    if isinstance(model, ModelSource):
        report = answered(data, out, model, settings, options, dataset, log)
        if report is not None:
            return report
    return explain_dataset(data, out, model, settings, options, dataset, log)


def answered(
    data: Dataset, out: Path, source: ModelSource, settings: Settings, options: Options, dataset, log: TextIO
) -> RunReport | None:
    """The report of a finished run, from its manifest alone: when DIR's manifest holds the same request
    (:func:`occlens.app.fingerprint.run_request`: the same settings, model spec and model files, the same code)
    stored with its settings, and every image of the dataset is recorded as explained with its files present.
    No model is loaded, no worker started, no torch imported. None otherwise (and with ``force``, which always
    checks the whole fingerprint): the run goes the full way."""
    if options.force or not (out / FILE).is_file():
        return None
    request = run_request(data, source, settings, options)
    if request is None:
        return None
    with Manifest(out) as manifest:
        note = manifest.resume()
        if note is None or note.get("request") != request:
            return None
        recorded = manifest.records()
        keys = [i.key for i in data.items]
        present = files_under(out / IMAGES)  # a recorded image keeps its stem: no stems to give
        if not all(finished(recorded.get(k), present, options.figures) for k in keys):
            return None
        prepare_out(out)  # the report is written again: a folder that has become read-only is one line
        remove_temporary(out, (IMAGES, "report"))
        if options.progress is not False:
            print(f"{dataset}: {len(keys)} images ({data.kind}); {len(keys)} done before, 0 to do", file=log)
        records = [recorded[k] for k in keys]
        return finish(out, records, f"occlens run: {dataset}", note["labels"], 0, 0.0, note["explained"])


def finish(out: Path, records: list[Record], title: str, names, done_now: int, seconds: float,
           explained: str) -> RunReport:  # fmt: skip
    """Summarise ``records`` (every image of the run, in order), write the report, say what was done."""
    from ..present.report import write_report

    if explained == explained_words(None, names):  # the model's default target: what its results turned out to be
        explained = explained_words(None, names, results_kind(out, records))
    summary = summarize_run(records, names=names)
    index = write_report(out, records, summary, images=out / IMAGES, title=title, total=len(records))
    return RunReport(out, summary, index, done_now, seconds, explained)


def results_kind(out: Path, records: list[Record]) -> str | None:
    """The ``target_kind`` the run's first explained image recorded (a segmenter's default is ``"segment"``, a
    detector's ``"box"``), or None (no image explained, or a file older than the key)."""
    first = next((r for r in records if r.ok), None)
    if first is None:
        return None
    try:
        return json.loads((out / IMAGES / f"{first.stem}.json").read_text()).get("target_kind")
    except (OSError, ValueError):
        return None


def explain_dataset(
    data: Dataset,
    out: Path,
    model: LoadedModel | ModelSource,
    settings: Settings,
    options: Options,
    dataset,
    log: TextIO,
) -> RunReport:
    """:func:`run_dataset` the full way: load the model, check the whole fingerprint, explain what is left."""
    from ..core.targets import resolve_target
    from ..models.recognise import with_preprocess
    from ..models.source import loaded
    from ..volumes import is_declared
    from .job import Job, check_windows_fit
    from .pipeline import run_jobs

    volumes = any(is_declared(i.path) for i in data.items)  # NIfTI files, DICOM folders: occlens.volumes
    if volumes and options.ray:
        raise ConfigError(f"dataset {dataset} holds volumes, which a run explains on this machine (not yet on Ray); "
                          f"leave --ray out")  # fmt: skip
    request = run_request(data, model, settings, options) if isinstance(model, ModelSource) else None
    # with ray, the driver's copy of a spec loads on the CPU: the workers run their own where options.device says
    model = loaded(model, ("cpu" if isinstance(model, ModelSource) else None) if options.ray else options.device)
    model = with_preprocess(model, settings.preprocess)  # its source too: the Ray workers load it so
    labels = resolve_labels(data, model.labels, output=model.output)
    targets = resolve_labels(data, model.labels, "target")
    options = replace(options, target=resolve_target(options.target, model.labels))
    settings = settings.for_model(model.patch)  # the model's window, if none given (fingerprinted)
    if volumes:  # one at a time, here: the model's batches of occluded volumes are the work, not the files
        options = replace(options, workers=0)
    else:
        check_windows_fit(model, settings)
    prepare_out(out)
    fingerprint = run_settings(data, model, settings, options)
    if any(t is not None for t in targets.values()):  # a CSV's target column
        explained = "each image's explained class (its CSV target)"
    else:
        explained = explained_words(options.target, model.labels)
    # what the next run asked the same way answers from, without loading the model
    resume = None if request is None else {"request": request, "labels": list(model.labels), "explained": explained}
    images = out / IMAGES
    title = f"occlens run: {dataset}"
    with Manifest(out) as manifest:
        remove_temporary(out, (IMAGES, "report"))
        old = manifest.settings()
        changed = changes(old or {}, json.loads(json.dumps(fingerprint)))
        if changed and old.get("fingerprint") != FINGERPRINT and not options.force:
            raise ConfigError(
                f"{out} holds a run made by an older occlens, which recorded its settings another way "
                f"({'; '.join(changed[:3])}); use another --out, or --force to delete its results and start over"
            )
        if changed and options.force:
            discard(images, manifest.records().values())
        manifest.start(fingerprint, options.force, resume)
        recorded = manifest.records()
        try:
            stems = output_stems([i.key for i in data.items], {k: r.stem for k, r in recorded.items()})
        except ConfigError:
            if old is None:  # a new DIR refused before any work: leave nothing behind
                manifest.remove()
            raise
        jobs = [Job(i.key, i.path, labels[i.key], stems[i.key], targets[i.key]) for i in data.items]
        present = files_under(images) if recorded else set()
        todo = [j for j in jobs if not finished(recorded.get(j.key), present, options.figures)]
        if options.progress is not False:
            print(
                f"{dataset}: {len(jobs)} images ({data.kind}); {len(jobs) - len(todo)} done before, {len(todo)} to do",
                file=log,
            )
        reporter = Reporter(out, [j.key for j in jobs], title, model.labels)
        recorder = Recorder(manifest, recorded, Bar(options.progress, "images", "run", len(todo)), reporter)
        start = time.perf_counter()
        try:
            if options.ray or min(options.workers, len(todo) // MIN_JOBS_PER_WORKER):  # other processes get it
                from ..core.targets import portable

                portable(options.target)  # a target function: by name (a lambda cannot go)
            if options.ray:
                from .cluster import run_on_ray

                run_on_ray(todo, model.source, settings, options, images, recorder)
            else:  # the model in eval mode for the whole run: its training mode is said once, not per image
                from ..models.runner import prepared

                with prepared(model.module, quiet=not todo):
                    run_jobs(todo, model, settings, options, images, recorder)
        except BaseException:
            recorder.close()  # what was written is recorded, however the run stopped
            if old is None and not manifest.records():  # a new DIR where nothing was done: leave nothing behind
                manifest.remove()
            else:  # the report shows every image recorded, and that the run stopped
                print(f"occlens: writing the report of the {len(recorded)} images recorded "
                      "(a second Ctrl-C stops at once)", file=log)  # fmt: skip
                try:
                    reporter.write(recorded, stopped=True)
                except Exception as err:  # why the run stopped is what matters; the last report written stays
                    print(f"occlens: the report was not updated: {err}", file=log)
            raise
        recorder.close(finished=True)
        seconds = time.perf_counter() - start
        records = [recorded[j.key] for j in jobs]
        return finish(out, records, title, model.labels, len(todo), seconds, explained)


def resolve_labels(
    dataset: Dataset, names: Sequence[str], column: str = "label", output: str | None = None
) -> dict[str, int | tuple[int, ...] | None]:
    """Each item's label (or, ``column="target"``, its target) as a class index; one that is no class of the
    model is a ConfigError. A CSV label with several classes (``3;7``) makes the run multi-label: every
    label is then a tuple of classes (one label, a tuple of one), which needs a sigmoid head (``output``)."""
    from ..core.scoring import check_truth, split_labels
    from ..core.targets import resolve_target

    several = column == "label" and dataset.kind == "csv" and any(multi_label(i.label) for i in dataset.items)
    index: dict[str, int | tuple[int, ...]] = {}
    for item in dataset.items:
        value = getattr(item, column)
        if value is not None and value not in index:
            given = value
            if several:  # every label a list of classes, a single one too
                given = split_labels(value)
                given = [given] if isinstance(given, str) else given
            try:  # a target: a class, or another kind spelled KIND:ARGS (occlens.core.targets)
                check = resolve_target if column == "target" else lambda v, n: check_truth(v, None, column, n)
                index[value] = check(given, names)
            except ConfigError as err:
                n = sum(getattr(i, column) == value for i in dataset.items)
                where = "class folders and CSV labels" if column == "label" else "CSV targets"
                raise ConfigError(
                    f"dataset {dataset.source}: {item.key} ({n} image(s) with this {column}): {err}; {where} "
                    f"must be the model's class names or indices (--labels FILE gives the names)"
                ) from None
    if several and output != "sigmoid":
        first = next(i for i in dataset.items if multi_label(i.label))
        raise ConfigError(
            f"dataset {dataset.source}: {first.key} has several labels ({first.label!r}), a multi-label truth, but "
            f"the model's output {output!r} is a softmax over classes that predicts one of them; give one label "
            f"per image, or --output sigmoid (output='sigmoid') for a multi-label (sigmoid) head"
        )
    return {i.key: None if getattr(i, column) is None else index[getattr(i, column)] for i in dataset.items}


def multi_label(label: str | None) -> bool:
    """Whether a label as written is several classes (:func:`occlens.core.scoring.split_labels`)."""
    from ..core.scoring import split_labels

    return label is not None and isinstance(split_labels(label), list)
