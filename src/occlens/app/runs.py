"""Dataset runs: explain a whole dataset, resumably, and write a browsable report (``occlens.run``).

Layout of DIR: ``images/STEM.json|.npz|.jpg`` per image (the result in the compact form and the
preview; ``STEM.png``, the figure, where ``figures`` asks for one; STEM is the image's path in the
dataset without its suffix, :mod:`occlens.app.outputs`), ``manifest.sqlite`` (see
:mod:`occlens.app.manifest`) and ``report/index.html``.

The work per image is :func:`occlens.app.job.process`; it depends on nothing but its arguments, so any
scheduler can run it. The one here runs it as a pipeline: worker processes decode images ahead and
write each image's files (and figure) behind, the model runs in this process, and this process alone
records finished images in the manifest, each *after* its files are written (a few per transaction,
:class:`Recorder`). Killed at any moment, a re-run finds every recorded image whole and redoes the
rest. The report is rewritten while the run goes on (:class:`Reporter`, throttled) and at the end.
With ``ray=True``, :mod:`occlens.app.cluster` runs it on Ray workers instead, on the same terms.

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
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

import torch

from ..core.declare import output_names
from ..core.errors import ConfigError, OcclensError
from ..core.scoring import check_truth
from ..core.settings import Settings, settings_with
from ..core.targets import resolve_target, spec_of
from ..models.loaded import LoadedModel, ModelSource
from .dataset import Dataset, list_dataset
from .job import Job, check_windows_fit, decode, explain_image, failed, process, record_of, write_run
from .manifest import Manifest, Record, changes
from .options import MIN_JOBS_PER_WORKER, Options
from .outputs import FIGURE, RUN_SUFFIXES, output_stems, prepare_out, remove_temporary, run_outputs, wants_figure
from .progress import RunBar, duration

IMAGES = "images"
WORKER_OF = "OCCLENS_PIPELINE_OF"  # set, to the run's process id, in the environment of its worker processes
# of Settings. Not the engine: dense, incremental and auto give the same map (to float rounding); fast and
# budget say when it is approximate
OUTPUT_SETTINGS = output_names(Settings)  # patch, stride, fill, seed, precision, fast, budget, all_classes, threshold
OUTPUT_OPTIONS = output_names(Options)  # target, top_k, also_true_class, max_pixels
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
    engine: str = "auto",
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
    figures: str = "mistakes",
    shared_fs: bool = False,
    settings: Settings | None = None,
) -> RunReport:
    """Explain a dataset, resumably, into ``out`` with a browsable report: ``occlens run`` in Python.

    ``dataset``: an ImageFolder folder (one sub-folder per class), a CSV with ``path,label`` columns, or
    a plain folder of images. ``out``: the run's folder; the same folder resumes the run (a run the
    command started, too). ``model``: a :class:`~occlens.LoadedModel`, a spec (``"default"``,
    ``"timm:NAME"``, a file), or None for the default model. The window settings are
    :func:`occlens.explain`'s; ``target``, ``top_k``, ``also_true_class``, ``max_pixels``, ``workers``,
    ``force``, ``figures``, ``ray``, ``address``, ``gpus_per_worker``, ``shared_fs`` are the command's flags
    of the same names (``occlens run --help``); ``device`` is where a spec is loaded (and, with ``ray``,
    where the workers run it). ``settings``: an :class:`occlens.Settings` holding the window settings at once
    (keywords given beside it, other than their defaults, override it). Returns a :class:`RunReport`;
    ``print(report)`` shows the summary the command prints.
    """
    from ..models.source import as_source

    if os.environ.get(WORKER_OF) == str(os.getppid()):  # a pipeline worker starting runs the caller's script again
        raise SystemExit(
            "occlens: error: occlens.run is being called again in one of its worker processes, which start by "
            'running your script; put the call under `if __name__ == "__main__":`, or pass workers=0'
        )
    settings = settings_with(settings, patch=patch, stride=stride, fill=fill, batch_size=batch_size, seed=seed,
                           precision=precision, compile=compile, engine=engine, fast=fast, budget=budget,
                           all_classes=all_classes, threshold=threshold)  # fmt: skip
    options = Options(target=target, top_k=top_k, also_true_class=also_true_class, max_pixels=max_pixels,
                      workers=workers, force=force, ray=ray, address=address, gpus_per_worker=gpus_per_worker,
                      device=device, figures=figures, shared_fs=shared_fs)  # fmt: skip
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
    from ..models.source import loaded
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
    labels = resolve_labels(data, model.labels, output=model.output)
    targets = resolve_labels(data, model.labels, "target")
    options = replace(options, target=resolve_target(options.target, model.labels))
    settings = settings.for_model(model.patch)  # the model's window, if none given (fingerprinted)
    check_windows_fit(model, settings)
    prepare_out(out)
    fingerprint = run_settings(data, model, settings, options)
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
        manifest.start(fingerprint, options.force)
        recorded = manifest.records()
        stems = output_stems([i.key for i in data.items], {k: r.stem for k, r in recorded.items()})
        jobs = [Job(i.key, i.path, labels[i.key], stems[i.key], targets[i.key]) for i in data.items]
        present = files_under(images) if recorded else set()
        todo = [j for j in jobs if not finished(recorded.get(j.key), present, options.figures)]
        print(
            f"{dataset}: {len(jobs)} images ({data.kind}); {len(jobs) - len(todo)} done before, {len(todo)} to do",
            file=log,
        )
        reporter = Reporter(out, [j.key for j in jobs], title, model.labels)
        recorder = Recorder(manifest, recorded, RunBar(len(todo)), reporter)
        start = time.perf_counter()
        try:
            if options.ray:
                from .cluster import run_on_ray

                run_on_ray(todo, model.source, settings, options, images, recorder)
            else:
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
        recorder.close()
        seconds = time.perf_counter() - start
        records = [recorded[j.key] for j in jobs]
        summary = summarize(records, names=model.labels)
        index = write_report(out, records, summary, title=title, total=len(records))
    return RunReport(out, summary, index, len(todo), seconds)


def resolve_labels(
    dataset: Dataset, names: Sequence[str], column: str = "label", output: str | None = None
) -> dict[str, int | tuple[int, ...] | None]:
    """Each item's label (or, ``column="target"``, its target) as a class index; one that is no class of the
    model is a ConfigError. A CSV label with several classes (``3;7``) makes the run multi-label: every
    label is then a tuple of classes (one label, a tuple of one), which needs a sigmoid head (``output``)."""
    several = column == "label" and dataset.kind == "csv" and any(";" in (i.label or "") for i in dataset.items)
    index: dict[str, int | tuple[int, ...]] = {}
    for item in dataset.items:
        value = getattr(item, column)
        if value is not None and value not in index:
            given = [v.strip() for v in value.split(";") if v.strip()] if several else value
            try:
                index[value] = check_truth(given, None, column, names)
            except ConfigError as err:
                n = sum(getattr(i, column) == value for i in dataset.items)
                where = "class folders and CSV labels" if column == "label" else "CSV targets"
                raise ConfigError(
                    f"dataset {dataset.source}: {item.key} ({n} image(s) with this {column}): {err}; {where} "
                    f"must be the model's class names or indices (--labels FILE gives the names)"
                ) from None
    if several and output != "sigmoid":
        first = next(i for i in dataset.items if ";" in (i.label or ""))
        raise ConfigError(
            f"dataset {dataset.source}: {first.key} has several labels ({first.label!r}), a multi-label truth, but "
            f"the model's output {output!r} is a softmax over classes that predicts one of them; give one label "
            f"per image, or --output sigmoid (output='sigmoid') for a multi-label (sigmoid) head"
        )
    return {i.key: None if getattr(i, column) is None else index[getattr(i, column)] for i in dataset.items}


def run_settings(dataset: Dataset, model: LoadedModel, settings: Settings, options: Options) -> dict:
    """What the outputs depend on, and nothing else: the dataset, the allow-listed settings and options
    (resolved: the stride, the target's index), and the model (file contents, not names)."""
    explained = settings.to_dict()
    chosen = {k: explained[k] for k in OUTPUT_SETTINGS} | {k: getattr(options, k) for k in OUTPUT_OPTIONS}
    chosen["target"] = spec_of(options.target)  # a class: its index, as always; another target: its spelling
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


def finished(record: Record | None, present: set[str], figures: str) -> bool:
    """Recorded as explained, and its files are there (``present``: :func:`files_under` of DIR/images),
    the figure too where ``figures`` asks for one."""
    if record is None or not record.ok:
        return False
    wanted = (*RUN_SUFFIXES, FIGURE) if wants_figure(figures, record.correct) else RUN_SUFFIXES
    return all(record.stem + suffix in present for suffix in wanted)


def files_under(images: Path) -> set[str]:
    """The files below ``images``, as paths relative to it (POSIX): one listing per folder, no ``stat`` per
    file, so that resuming a finished run of 50,000 images takes well under a second here."""
    found: set[str] = set()
    for root, _, files in os.walk(images):
        prefix = Path(root).relative_to(images).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        found.update(prefix + name for name in files)
    return found


def discard(images: Path, records: Iterable[Record]) -> None:
    """Delete the outputs of ``records`` (before their manifest rows go)."""
    for record in records:
        for path in run_outputs(images / record.stem):
            path.unlink(missing_ok=True)
    for root, dirs, _ in os.walk(images, topdown=False):
        for d in dirs:
            try:
                Path(root, d).rmdir()
            except OSError:
                pass  # not empty: something of the user's


# --------------------------------------------------------------------------------------------------
# recording: the manifest and the report, as images finish


class Recorder:
    """Records finished images in the manifest, a few per transaction, and keeps the report up to date.

    :meth:`add` takes one image's record (its files written); records wait at most ``every_s`` seconds
    or ``most`` records before they are written (each transaction costs an fsync), and :meth:`flush`
    writes them at once (the run calls it when it ends, however it ends; a record still waiting when the
    process is killed outright is an image the next run redoes). ``recorded`` (key -> record) is kept
    up to date with what is written.
    """

    def __init__(self, manifest: Manifest, recorded: dict[str, Record], bar: RunBar, reporter: Reporter | None = None,
                 every_s: float = 0.5, most: int = 64) -> None:  # fmt: skip
        self.manifest, self.recorded, self.bar, self.reporter = manifest, recorded, bar, reporter
        self.every_s, self.most = every_s, most
        self.waiting: list[Record] = []
        self.since = time.perf_counter()

    def add(self, record: Record) -> None:
        if not self.waiting:
            self.since = time.perf_counter()
        self.waiting.append(record)
        self.bar.step(record.ok)
        if len(self.waiting) >= self.most or time.perf_counter() - self.since >= self.every_s:
            self.flush()

    def flush(self, report: bool = True) -> None:
        if self.waiting:
            self.manifest.add_all(self.waiting)
            self.recorded.update((r.key, r) for r in self.waiting)
            self.waiting = []
            if report and self.reporter is not None:
                self.reporter.maybe(self.recorded)

    def close(self) -> None:
        """Write what waits (the run writes the last report itself), and clear the progress line."""
        try:
            self.flush(report=False)
        finally:
            self.bar.close()


class Reporter:
    """Rewrites the report while a run goes on: after a record is written, when ``every_s`` seconds have
    passed since the last report and at least ``1 / share`` times as long as the last one took, so that
    writing the report takes at most about ``share`` of the run's time. The run writes the last report
    itself when it ends, or (:meth:`write` with ``stopped``) one that says it stopped early."""

    def __init__(self, out: Path, keys: Sequence[str], title: str, names: Sequence[str] | None = None,
                 every_s: float = 5.0, share: float = 0.1) -> None:  # fmt: skip
        self.out, self.keys, self.title, self.names = out, keys, title, names
        self.every_s, self.share = every_s, share
        self.last = time.perf_counter()
        self.took = 0.0
        self.written = 0  # reports written during the run

    def maybe(self, recorded: dict[str, Record]) -> None:
        if time.perf_counter() - self.last < max(self.every_s, self.took / self.share):
            return
        start = time.perf_counter()
        self.write(recorded)
        self.last = time.perf_counter()
        self.took = self.last - start
        self.written += 1

    def write(self, recorded: dict[str, Record], stopped: bool = False) -> None:
        from ..present.report import write_report

        records = [recorded[k] for k in self.keys if k in recorded]
        summary = summarize(records, names=self.names)
        stopped = stopped and len(records) < len(self.keys)  # stopped with every image done: it finished
        write_report(self.out, records, summary, title=self.title, total=len(self.keys), stopped=stopped)


# --------------------------------------------------------------------------------------------------
# scheduling: a pipeline on one machine


def run_jobs(
    jobs: list[Job], model: LoadedModel, settings: Settings, options: Options, images: Path, recorder: Recorder
) -> None:
    """Run ``jobs`` and record each with ``recorder`` as it finishes (``options.workers`` = 0: one by one, here)."""
    workers = min(options.workers, len(jobs) // MIN_JOBS_PER_WORKER)  # starting a worker costs a few images
    if workers == 0:
        for job in jobs:
            recorder.add(process(job, model, settings, options, images))
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, initializer=worker_start,
                               initargs=(os.getpid(), tuple(model.labels), options))  # fmt: skip
    os.environ[WORKER_OF] = str(os.getpid())  # the workers know they are ours (see run())
    threads = torch.get_num_threads()
    # the workers take cores too: a model whose threads wait for a core at every operation runs many times
    # slower (a tiny model ran 5x slower with 2 threads beside 2 busy workers on 2 cores)
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    try:
        pipeline(jobs, model, settings, options, images, recorder, pool, workers)
    finally:
        torch.set_num_threads(threads)
        pool.shutdown(wait=True, cancel_futures=True)
        os.environ.pop(WORKER_OF, None)


def pipeline(jobs, model, settings, options, images, recorder: Recorder, pool: ProcessPoolExecutor, workers: int):
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
            recorder.add(rec)

    top_up()
    while decoding:
        job, future = decoding.popleft()
        top_up()
        try:
            image, seconds = future.result()
            result = explain_image(model, image, job.label, job.path, settings, options, seconds, target=job.target)
        except OcclensError as err:
            recorder.add(failed(job, err))
            continue
        except BrokenProcessPool:
            raise worker_died(job) from None
        # the class names go to each worker once (worker_start), not with every result
        written = pool.submit(write_in_worker, replace(result, labels=None), images / job.stem)
        writing.append((job, written, record_of(job, result)))
        drain(ahead)
    drain(0)


_WORKER: dict = {}  # in each worker process: the run's class names and options (worker_start)


def write_in_worker(result, stem: Path) -> None:
    write_run(result, _WORKER["labels"], stem, _WORKER["options"])


def worker_died(job: Job) -> OcclensError:
    return OcclensError(
        f"a worker process died while the run was at {job.key} (out of memory, a crash in an image decoder, or, "
        f'from a Python script, a call of occlens.run outside `if __name__ == "__main__":`); re-run to resume, '
        f"or use --workers 0 (workers=0) to run everything in one process"
    )


def worker_start(parent: int, labels: tuple[str, ...] = (), options: Options | None = None) -> None:
    """In each worker: leave Ctrl-C to the parent, die with it, one torch thread; keep the class names and
    options for :func:`write_in_worker`."""
    _WORKER.update(labels=labels, options=options)
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
class LabelCount:
    """One class of a multi-label run: images truly having it, how many of those the model predicts it for,
    how many it misses, and its false alarms (predicted on images that do not have it)."""

    cls: int
    name: str
    images: int
    predicted: int
    missed: int
    false_alarms: int


@dataclass(frozen=True)
class Summary:
    """What a run found: counts, accuracy over labelled images, the most confident mistakes, per-class counts
    (a multi-label run: accuracy is exact-match, every true label predicted and no other, and ``labels``
    holds the per-label counts)."""

    images: int
    explained: int
    labelled: int
    correct: int
    mistakes: tuple[Record, ...]  # most confident first
    classes: tuple[ClassCount, ...]  # by class index
    failed: tuple[Record, ...]
    labels: tuple[LabelCount, ...] = ()  # multi-label runs, by class index

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def multi_label(self) -> bool:
        return bool(self.labels)


def summarize(records: Sequence[Record], mistakes: int = 10, names: Sequence[str] | None = None) -> Summary:
    """The summary of ``records`` (one per image of the dataset); ``names``: the model's class names, for
    the per-label counts of a multi-label run."""
    ok = [r for r in records if r.ok]
    labelled = [r for r in ok if r.labelled]
    wrong = sorted((r for r in labelled if not r.correct), key=lambda r: (-(r.confidence or 0.0), r.key))
    several = [r for r in labelled if r.true_labels is not None]
    single = [r for r in labelled if r.true_labels is None]
    known: dict[int, str] = {}
    for r in ok:
        known[r.predicted] = r.predicted_name or str(r.predicted)
        if r.label is not None:
            known[r.label] = r.label_name or str(r.label)
    # one pass each (not one per class: 50,000 images of 1,000 classes)
    images, correct = Counter(r.label for r in single), Counter(r.label for r in single if r.correct)
    predicted = Counter(r.predicted for r in ok)
    classes = tuple(ClassCount(c, known[c], images[c], correct[c], predicted[c]) for c in sorted(known))
    per_label = ()
    if several:
        true = Counter(c for r in several for c in r.true_labels)
        hits = Counter(c for r in several for c in set(r.true_labels) & set(r.predicted_labels or ()))
        alarms = Counter(c for r in several for c in set(r.predicted_labels or ()) - set(r.true_labels))

        def name(c: int) -> str:
            return names[c] if names is not None and 0 <= c < len(names) else known.get(c, str(c))

        per_label = tuple(
            LabelCount(c, name(c), true[c], hits[c], true[c] - hits[c], alarms[c])
            for c in sorted(set(true) | set(alarms))
        )
    return Summary(
        images=len(records),
        explained=len(ok),
        labelled=len(labelled),
        correct=sum(bool(r.correct) for r in labelled),
        mistakes=tuple(wrong[:mistakes]),
        classes=classes if not several else tuple(c for c in classes if c.images or c.predicted),
        failed=tuple(r for r in records if not r.ok),
        labels=per_label,
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
    elif summary.multi_label:
        lines.append(
            f"exact-match accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}% "
            f"(every true label predicted, and no other)"
        )
    else:
        lines.append(f"accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}%")
    if summary.mistakes and summary.multi_label:
        names = {c.cls: c.name for c in summary.labels}  # every true or predicted label of the run has a row
        lines.append("most confident mistakes:")
        lines.append(f"  {'P(Q)':>6}  {'image':<32} {'predicted labels':<24} true labels")
        for r in summary.mistakes:
            said = ";".join(names.get(c, str(c)) for c in r.predicted_labels or ()) or "-"
            truth = ";".join(names.get(c, str(c)) for c in r.true_labels or (() if r.label is None else (r.label,)))
            lines.append(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {said[:24]:<24} {truth}")
    elif summary.mistakes:
        lines.append("most confident mistakes:")
        lines.append(f"  {'P(Q)':>6}  {'image':<32} {'predicted Q':<24} true K")
        for r in summary.mistakes:
            lines.append(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {r.predicted_name[:24]:<24} {r.label_name}")
    if summary.multi_label:
        lines.append(f"per label:\n  {'label':<28} {'images':>6} {'predicted':>9} {'missed':>6} {'false alarms':>12}")
        for c in summary.labels[:rows]:
            lines.append(f"  {f'{c.cls} {c.name}'[:28]:<28} {c.images:>6} {c.predicted:>9} {c.missed:>6} "
                         f"{c.false_alarms:>12}")  # fmt: skip
        if len(summary.labels) > rows:
            lines.append(f"  ... {len(summary.labels) - rows} more labels")
    elif summary.classes:
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
