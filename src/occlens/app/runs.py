"""Dataset runs: explain a whole dataset, resumably, and write a browsable report (``occlens.run``).

Layout of DIR: ``images/STEM.png|.json|.npz`` per image (what ``occlens explain`` writes; STEM is the
image's path in the dataset without its suffix, :mod:`occlens.app.outputs`), ``manifest.sqlite``
(see :mod:`occlens.app.manifest`) and ``report/index.html``.

The work per image is :func:`occlens.app.job.process`; it depends on nothing but its arguments, so any
scheduler can run it. The one here runs it as a pipeline: worker processes decode images ahead and
draw the figures, the model runs in this process, and this process alone records finished images in
the manifest, each *after* its files are written. Killed at any moment, a re-run finds every recorded
image whole and redoes the rest. With ``ray=True``, :mod:`occlens.app.cluster` runs it on Ray workers
instead, on the same terms.

What the outputs depend on is an explicit allow-list (:data:`OUTPUT_SETTINGS`, :data:`OUTPUT_OPTIONS`
and the model's identity): a DIR made with other values of those is refused (or, with ``force``,
started over); the batch size, device, workers, compile and the Ray options are not among them.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

import torch

from ..core.errors import ConfigError, OcclensError
from ..core.scoring import check_class
from ..core.settings import Settings
from ..models.default import LoadedModel, ModelSource
from .dataset import Dataset, list_dataset
from .job import Job, check_windows_fit, decode, explain_image, failed, process, record_of
from .manifest import Manifest, Record, changes
from .options import MIN_JOBS_PER_WORKER, Options
from .outputs import output_stems, outputs, prepare_out, remove_temporary, write_outputs
from .progress import RunBar, duration

IMAGES = "images"
WORKER_OF = "OCCLENS_PIPELINE_OF"  # set, to the run's process id, in the environment of its worker processes
# of Settings. Not the engine: dense, incremental and auto give the same map (to float rounding); fast and
# budget say when it is approximate
OUTPUT_SETTINGS = ("patch", "stride", "fill", "seed", "precision", "fast", "budget", "all_classes", "threshold")
OUTPUT_OPTIONS = ("target", "top_k", "also_true_class", "max_pixels")  # of Options
FINGERPRINT = 2  # how run_settings records them: 2 = resolved values of the allow-list (1: the flags as typed)


@dataclass(frozen=True)
class RunReport:
    """What :func:`run` did: the summary of DIR's images, the report's index page, this call's share."""

    out: Path
    summary: Summary
    index: Path
    done_now: int
    seconds: float

    def __str__(self) -> str:
        report = f"report: {self.index}  (δL < 0: the window supported the prediction)"
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
    engine: str | None = None,
    fast: bool = False,
    budget: float | None = None,
    all_classes: bool = False,
    threshold: float = 0.5,
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
) -> RunReport:
    """Explain a dataset, resumably, into ``out`` with a browsable report: ``occlens run`` in Python.

    ``dataset``: an ImageFolder folder (one sub-folder per class), a CSV with ``path,label`` columns, or
    a plain folder of images. ``out``: the run's folder; the same folder resumes the run (a run the
    command started, too). ``model``: a :class:`~occlens.LoadedModel`, a spec (``"default"``,
    ``"timm:NAME"``, a file), or None for the default model. The window settings are
    :func:`occlens.explain`'s; ``target``, ``top_k``, ``also_true_class``, ``max_pixels``, ``workers``,
    ``force``, ``ray``, ``address``, ``gpus_per_worker`` are the command's flags of the same names
    (``occlens run --help``); ``device`` is where a spec is loaded (and, with ``ray``, where the workers
    run it). Returns a :class:`RunReport`; ``print(report)`` shows the summary the command prints.
    """
    from ..models.load import as_source

    if os.environ.get(WORKER_OF) == str(os.getppid()):  # a pipeline worker starting runs the caller's script again
        raise SystemExit(
            "occlens: error: occlens.run is being called again in one of its worker processes, which start by "
            'running your script; put the call under `if __name__ == "__main__":`, or pass workers=0'
        )
    settings = Settings.build(patch, stride, fill, batch_size=batch_size, seed=seed, precision=precision,
                              compile=compile, engine=engine, fast=fast, budget=budget,
                              all_classes=all_classes, threshold=threshold)  # fmt: skip
    options = Options(target=target, top_k=top_k, also_true_class=also_true_class, max_pixels=max_pixels,
                      workers=workers, force=force, ray=ray, address=address, gpus_per_worker=gpus_per_worker,
                      device=device)  # fmt: skip
    return run_dataset(dataset, out, as_source(model), settings, options)


def run_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | ModelSource,
    settings: Settings,
    options: Options,
    log: TextIO | None = None,
) -> RunReport:
    """Explain every image of ``dataset`` into ``out/images/``, record each in ``out/manifest.sqlite``,
    write ``out/report/index.html``. Re-running with the same ``out`` skips finished images.

    ``model``: a :class:`LoadedModel`, or the :class:`ModelSource` of one, loaded once the options and
    the dataset are checked (on ``options.device``; with ``options.ray`` on the CPU: the driver's copy,
    for the class names, the preprocessing and the fingerprint, while the workers load their own).
    Lines about the run go to ``log`` (default: stderr).
    """
    from ..models.load import loaded
    from ..present.report import write_report
    from .cluster import check_options

    log = sys.stderr if log is None else log
    out = Path(out)
    check_options(options, model if isinstance(model, ModelSource) else model.source)
    data = list_dataset(Path(dataset).absolute(), exclude=out)
    for folder in (IMAGES, "report"):
        if (out / folder).exists() and not (out / folder).is_dir():
            raise ConfigError(f"{out / folder} is a file, where the run keeps its {folder}; use another --out")
    # with ray, the driver's copy of a spec loads on the CPU: the workers run their own where options.device says
    model = loaded(model, ("cpu" if isinstance(model, ModelSource) else None) if options.ray else options.device)
    labels = resolve_labels(data, model.labels)
    targets = resolve_labels(data, model.labels, "target")
    options = replace(options, target=check_class(options.target, None, "--target", model.labels))
    settings = settings.for_model(model.patch)  # the model's window, if none given (fingerprinted)
    check_windows_fit(model, settings)
    prepare_out(out)
    fingerprint = run_settings(data, model, settings, options)
    images = out / IMAGES
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
        manifest.start(fingerprint, options.force)
        recorded = manifest.records()
        stems = output_stems([i.key for i in data.items], {k: r.stem for k, r in recorded.items()})
        jobs = [Job(i.key, i.path, labels[i.key], stems[i.key], targets[i.key]) for i in data.items]
        todo = [j for j in jobs if not finished(recorded.get(j.key), images)]
        print(
            f"{dataset}: {len(jobs)} images ({data.kind}); {len(jobs) - len(todo)} done before, {len(todo)} to do",
            file=log,
        )
        start = time.perf_counter()
        try:
            if options.ray:
                from .cluster import run_on_ray

                run_on_ray(todo, model.source, settings, options, images, manifest, RunBar(len(todo)))
            else:
                run_jobs(todo, model, settings, options, images, manifest, RunBar(len(todo)))
        except BaseException:
            if old is None and not manifest.records():  # a new DIR where nothing was done: leave nothing behind
                manifest.remove()
            raise
        seconds = time.perf_counter() - start
        recorded = manifest.records()
        records = [recorded[j.key] for j in jobs]
        summary = summarize(records)
        index = write_report(out, records, summary, title=f"occlens run: {dataset}")
    return RunReport(out, summary, index, len(todo), seconds)


def resolve_labels(dataset: Dataset, names: Sequence[str], column: str = "label") -> dict[str, int | None]:
    """Each item's label (or, ``column="target"``, its target) as a class index; one that is no class of the
    model is a ConfigError."""
    index: dict[str, int] = {}
    for item in dataset.items:
        value = getattr(item, column)
        if value is not None and value not in index:
            try:
                index[value] = check_class(value, None, column, names)
            except ConfigError as err:
                n = sum(getattr(i, column) == value for i in dataset.items)
                where = "class folders and CSV labels" if column == "label" else "CSV targets"
                raise ConfigError(
                    f"dataset {dataset.source}: {item.key} ({n} image(s) with this {column}): {err}; {where} "
                    f"must be the model's class names or indices (--labels FILE gives the names)"
                ) from None
    return {i.key: None if getattr(i, column) is None else index[getattr(i, column)] for i in dataset.items}


def run_settings(dataset: Dataset, model: LoadedModel, settings: Settings, options: Options) -> dict:
    """What the outputs depend on, and nothing else: the dataset, the allow-listed settings and options
    (resolved: the stride, the target's index), and the model (file contents, not names)."""
    explained = settings.to_dict()
    chosen = {k: explained[k] for k in OUTPUT_SETTINGS} | {k: getattr(options, k) for k in OUTPUT_OPTIONS}
    return {
        "fingerprint": FINGERPRINT,
        "dataset": str(dataset.source.resolve()),
        "options": json.loads(json.dumps(dict(sorted(chosen.items())))),
        "model": {
            **model_identity(model),
            "preprocess": json.loads(json.dumps(asdict(model.preprocess))),
            "output": model.output,
            "labels": hashlib.sha256("\n".join(model.labels).encode()).hexdigest()[:16],
        },
    }


def model_identity(model: LoadedModel) -> dict:
    """The model's file contents (a Hugging Face folder: its config and weights files'; or its name and
    weights' contents); a model built by hand: its parameters."""
    source = model.source
    if source is None:
        if isinstance(model.module, torch.nn.Module):
            digest = hashlib.sha256()
            for name, tensor in model.module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
            return {"parameters": digest.hexdigest()[:16], "weights": None}
        return {"name": model.name, "weights": None}
    spec = Path(source.spec)
    if source.spec == "default":
        from ..models.default import weights_path

        identity = {"default": sha256(Path(weights_path()))}
    elif spec.is_dir():  # a Hugging Face folder: its config and weights files, by name and contents
        from ..models.huggingface import model_files

        digest = hashlib.sha256()
        for path in model_files(spec):
            digest.update(f"{path.name}\0{sha256(path)}\0".encode())
        identity = {"folder": digest.hexdigest()[:16]}
    else:
        identity = {"file": sha256(spec)} if spec.is_file() else {"name": source.spec}
    return {**identity, "weights": None if source.weights is None else sha256(Path(source.weights))}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# the output folder


def finished(record: Record | None, images: Path) -> bool:
    """Recorded as explained, and its three files are there."""
    return record is not None and record.ok and all(p.is_file() for p in outputs(images / record.stem))


def discard(images: Path, records: Iterable[Record]) -> None:
    """Delete the outputs of ``records`` (before their manifest rows go)."""
    for record in records:
        for path in outputs(images / record.stem):
            path.unlink(missing_ok=True)
    for root, dirs, _ in os.walk(images, topdown=False):
        for d in dirs:
            try:
                Path(root, d).rmdir()
            except OSError:
                pass  # not empty: something of the user's


# --------------------------------------------------------------------------------------------------
# scheduling: a pipeline on one machine


def run_jobs(
    jobs: list[Job],
    model: LoadedModel,
    settings: Settings,
    options: Options,
    images: Path,
    manifest: Manifest,
    bar: RunBar,
) -> None:
    """Run ``jobs`` and record each in ``manifest`` as it finishes (``options.workers`` = 0: one by one, here)."""
    try:
        workers = min(options.workers, len(jobs) // MIN_JOBS_PER_WORKER)  # starting a worker costs a few images
        if workers == 0:
            for job in jobs:
                bar.step(manifest.add(process(job, model, settings, options, images)))
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, context, initializer=worker_start, initargs=(os.getpid(),))
        os.environ[WORKER_OF] = str(os.getpid())  # the workers know they are ours (see run())
        try:
            pipeline(jobs, model, settings, options, images, manifest, bar, pool, workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            os.environ.pop(WORKER_OF, None)
    finally:
        bar.close()


def pipeline(jobs, model, settings, options, images, manifest, bar: RunBar, pool: ProcessPoolExecutor, workers: int):
    """Workers decode ahead and write behind; the model runs here; records follow the writes."""
    ahead = 2 * workers
    waiting = iter(jobs)
    decoding: deque[tuple[Job, Future]] = deque()
    writing: deque[tuple[Job, Future, Record]] = deque()

    def top_up() -> None:
        for job in waiting:
            decoding.append((job, pool.submit(decode, job.path, model.preprocess, options.max_pixels)))
            if len(decoding) >= ahead:
                return

    def drain(limit: int) -> None:
        while writing and (len(writing) > limit or writing[0][1].done()):
            job, future, rec = writing.popleft()
            try:
                future.result()
            except (OcclensError, OSError) as err:  # the figure or files could not be written: this image fails
                rec = failed(job, err)
            except BrokenProcessPool:
                raise worker_died(job) from None
            bar.step(manifest.add(rec))

    top_up()
    while decoding:
        job, future = decoding.popleft()
        top_up()
        try:
            image, seconds = future.result()
            result = explain_image(model, image, job.label, job.path, settings, options, seconds, target=job.target)
        except OcclensError as err:
            bar.step(manifest.add(failed(job, err)))
            continue
        except BrokenProcessPool:
            raise worker_died(job) from None
        true_class = options.also_true_class or None
        written = pool.submit(write_outputs, result, result.image, model.labels, images / job.stem, true_class)
        writing.append((job, written, record_of(job, result)))
        drain(ahead)
    drain(0)


def worker_died(job: Job) -> OcclensError:
    return OcclensError(
        f"a worker process died while the run was at {job.key} (out of memory, a crash in an image decoder, or, "
        f'from a Python script, a call of occlens.run outside `if __name__ == "__main__":`); re-run to resume, '
        f"or use --workers 0 (workers=0) to run everything in one process"
    )


def worker_start(parent: int) -> None:
    """In each worker: leave Ctrl-C to the parent, die with it, one torch thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # Linux: be killed when the parent dies, even by SIGKILL, so no orphan writes files later
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# progress and summary


@dataclass(frozen=True)
class ClassCount:
    """One class: images truly of it, how many of those were right, how many images were predicted as it."""

    cls: int
    name: str
    images: int
    correct: int
    predicted: int


@dataclass(frozen=True)
class Summary:
    """What a run found: counts, accuracy over labelled images, the most confident mistakes, per-class counts."""

    images: int
    explained: int
    labelled: int
    correct: int
    mistakes: tuple[Record, ...]  # most confident first
    classes: tuple[ClassCount, ...]  # by class index
    failed: tuple[Record, ...]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def summarize(records: Sequence[Record], mistakes: int = 10) -> Summary:
    """The summary of ``records`` (one per image of the dataset)."""
    ok = [r for r in records if r.ok]
    labelled = [r for r in ok if r.label is not None]
    wrong = sorted((r for r in labelled if not r.correct), key=lambda r: (-(r.confidence or 0.0), r.key))
    names: dict[int, str] = {}
    for r in ok:
        names[r.predicted] = r.predicted_name or str(r.predicted)
        if r.label is not None:
            names[r.label] = r.label_name or str(r.label)
    classes = tuple(
        ClassCount(
            c,
            names[c],
            sum(r.label == c for r in labelled),
            sum(r.label == c and r.correct for r in labelled),
            sum(r.predicted == c for r in ok),
        )
        for c in sorted(names)
    )
    return Summary(
        images=len(records),
        explained=len(ok),
        labelled=len(labelled),
        correct=sum(bool(r.correct) for r in labelled),
        mistakes=tuple(wrong[:mistakes]),
        classes=classes,
        failed=tuple(r for r in records if not r.ok),
    )


def summary_text(summary: Summary, done_now: int, seconds: float, rows: int = 30) -> str:
    """The summary as the command prints it."""
    lines: list[str] = []
    rate = f", {done_now / seconds:.2f} images/s" if done_now and seconds > 0 else ""
    lines.append(
        f"explained {summary.explained} of {summary.images} images ({done_now} this run in {duration(seconds)}{rate}); "
        f"{len(summary.failed)} failed"
    )
    if summary.accuracy is None:
        lines.append("accuracy: - (no labels)")
    else:
        lines.append(f"accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}%")
    if summary.mistakes:
        lines.append("most confident mistakes:")
        lines.append(f"  {'P(Q)':>6}  {'image':<32} {'predicted Q':<24} true K")
        for r in summary.mistakes:
            lines.append(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {r.predicted_name[:24]:<24} {r.label_name}")
    if summary.classes:
        lines.append(f"per class:\n  {'class':<28} {'images':>6} {'correct':>7} {'accuracy':>8} {'predicted':>9}")
        for c in summary.classes[:rows]:
            acc = f"{100 * c.correct / c.images:.1f}%" if c.images else "-"
            lines.append(f"  {f'{c.cls} {c.name}'[:28]:<28} {c.images:>6} {c.correct:>7} {acc:>8} {c.predicted:>9}")
        if len(summary.classes) > rows:
            lines.append(f"  ... {len(summary.classes) - rows} more classes in the report")
    if summary.failed:
        lines.append("failed:")
        for r in summary.failed:
            lines.append(f"  {r.key}: {r.error}")
    return "\n".join(lines)
