"""``occlens run DATASET --out DIR``: explain a whole dataset, resumably, and write a browsable report.

Layout of DIR: ``images/STEM.png|.json|.npz`` per image (what ``occlens explain`` writes; STEM is the
image's path in the dataset without its suffix), ``manifest.sqlite`` (see :mod:`occlens.manifest`)
and ``report/index.html``.

The work per image is :func:`process`: ``(job, args, model) -> Record``, decode, explain, write the
three files; it depends on nothing but its arguments, so any scheduler can run it. The one here runs
it as a pipeline: worker processes decode images ahead and draw the figures, the model runs in this
process, and this process alone records finished images in the manifest, each *after* its files are
written. Killed at any moment, a re-run finds every recorded image whole and redoes the rest.
With ``--ray``, :mod:`occlens.distributed` runs :func:`process` on Ray workers instead, on the same terms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from ..cli import DESCRIPTION_FLAGS, add_common, annotate, class_index, explain_image, prepare_out, write_outputs
from ..core.errors import ConfigError, ImageError, OcclensError
from ..core.image import read_image
from .dataset import Dataset, list_dataset, output_stems
from .manifest import Manifest, Record, changes, now
from .progress import Line

IMAGES = "images"
OUTPUT_SUFFIXES = (".png", ".json", ".npz")
# options that do not change the outputs (or that the model fingerprint already covers)
NOT_SETTINGS = frozenset(
    {"run", "dataset", "out", "workers", "force", "device", "batch_size", "compile", "trust_pickle", "model",
     "weights", "model_config", "ray", "address", "gpus_per_worker", *DESCRIPTION_FLAGS}
)  # fmt: skip
MIN_JOBS_PER_WORKER = 8
TEMPORARY = re.compile(r"^\..+\.part$")  # what files.atomic_write leaves when killed mid-write


@dataclass(frozen=True)
class Job:
    """One image to explain: its key in the manifest, its file, its true class, its output stem under images/."""

    key: str
    path: Path
    label: int | None
    stem: str


# --------------------------------------------------------------------------------------------------
# command line


def add_run_parser(sub) -> None:
    """Register ``occlens run`` on the ``occlens`` command's sub-parsers."""
    p = sub.add_parser(
        "run",
        help="explain a dataset (resumable) and write an HTML report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=run_cmd.__doc__,
    )
    p.add_argument("dataset", type=Path, metavar="DATASET", help="ImageFolder folder, path,label CSV, or image folder")
    p.add_argument("--target", help="explain this class instead of the prediction Q (index or name)")
    p.add_argument("--also-true-class", action="store_true", help="draw the true class's map even when K = Q")
    p.add_argument("--top-k", type=int, default=5, help="how many top classes to record")
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="processes that decode images and draw figures while the model runs (0: all in this process; "
        f"fewer when there are under {MIN_JOBS_PER_WORKER} images per worker to do); with --ray: Ray workers, "
        "each loading the model once",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true", help="if DIR holds a run with other settings, delete it and start over"
    )
    cluster = p.add_argument_group("Ray cluster (see README, 'Runs on a Ray cluster')")
    cluster.add_argument(
        "--ray", action="store_true",
        help="explain the images on Ray workers (pip install 'occlens[ray]'): a local Ray instance, or --address",
    )  # fmt: skip
    cluster.add_argument(
        "--address", help="join the Ray cluster at this address (HOST:PORT of the head node, ray://HOST:PORT, auto)"
    )
    cluster.add_argument(
        "--gpus-per-worker", type=float, metavar="F",
        help="GPUs per Ray worker: 1, or 0.25 for 4 workers per GPU; None: the cluster's GPUs shared evenly by the "
        "workers, at most 1 each, and none with --device cpu",
    )  # fmt: skip
    add_common(p)
    out = next(a for a in p._actions if a.dest == "out")  # add_common's --out, required here
    out.required, out.default, out.help = True, argparse.SUPPRESS, "output folder DIR (the same DIR resumes a run)"
    p.set_defaults(run=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    """Explain every image of DATASET into DIR/images/, record each in DIR/manifest.sqlite, write
    DIR/report/index.html and print a summary. Re-running with the same DIR skips finished images."""
    from ..cli import load_model
    from ..present.report import write_report
    from .cluster import check_options, driver_args

    if args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    check_options(args)
    dataset = list_dataset(args.dataset.absolute(), exclude=args.out)
    model = load_model(driver_args(args) if args.ray else args)  # with --ray the workers load their own
    labels = resolve_labels(dataset, model.labels)
    target = class_index(args.target, model.labels, "--target")
    prepare_out(args.out)
    settings = run_settings(args, model, dataset)
    with Manifest(args.out) as manifest:
        remove_temporary(args.out)
        if changes(manifest.settings() or {}, json.loads(json.dumps(settings))) and args.force:
            discard(args.out, manifest.records().values())
        manifest.start(settings, args.force)
        recorded = manifest.records()
        stems = output_stems([i.key for i in dataset.items], {k: r.stem for k, r in recorded.items()})
        jobs = [Job(i.key, i.path, labels[i.key], stems[i.key]) for i in dataset.items]
        todo = [j for j in jobs if not finished(recorded.get(j.key), args.out)]
        print(
            f"{args.dataset}: {len(jobs)} images ({dataset.kind}); {len(jobs) - len(todo)} done before, "
            f"{len(todo)} to do",
            file=sys.stderr,
        )
        start = time.perf_counter()
        if args.ray:
            from .cluster import run_on_ray as schedule
        else:
            schedule = run_jobs
        schedule(todo, args, model, target, manifest, RunBar(len(todo)))
        seconds = time.perf_counter() - start
        recorded = manifest.records()
        records = [recorded[j.key] for j in jobs]
        summary = summarize(records)
        index = write_report(args.out, records, summary, title=f"occlens run: {args.dataset}")
    print_summary(summary, len(todo), seconds)
    print(f"report: {index}  (δL < 0: the window supported the prediction)")
    return 2 if summary.failed else 0


def resolve_labels(dataset: Dataset, names: Sequence[str]) -> dict[str, int | None]:
    """Each item's label as a class index; a label that is no class of the model is a ConfigError."""
    index: dict[str, int] = {}
    for item in dataset.items:
        if item.label is not None and item.label not in index:
            try:
                index[item.label] = class_index(item.label, names, "label")
            except ConfigError as err:
                n = sum(i.label == item.label for i in dataset.items)
                raise ConfigError(
                    f"dataset {dataset.source}: {item.key} ({n} image(s) with this label): {err}; class folders and "
                    f"CSV labels must be the model's class names or indices (--labels FILE gives the names)"
                ) from None
    return {item.key: None if item.label is None else index[item.label] for item in dataset.items}


def run_settings(args: argparse.Namespace, model, dataset: Dataset) -> dict:
    """What the outputs depend on: the dataset, the explanation options and the model (file contents, not names)."""
    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS and not callable(v)}
    spec = Path(args.model)
    if args.model == "default":
        from ..models.default import weights_path

        identity = {"default": sha256(Path(weights_path()))}
    else:
        identity = {"file": sha256(spec)} if spec.is_file() else {"name": args.model}
    return {
        "dataset": str(dataset.source.resolve()),
        "options": json.loads(json.dumps(options, default=str)),
        "model": {
            **identity,
            "weights": None if args.weights is None else sha256(args.weights),
            "preprocess": json.loads(json.dumps(asdict(model.preprocess))),
            "output": model.output,
            "labels": hashlib.sha256("\n".join(model.labels).encode()).hexdigest()[:16],
        },
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# the output folder


def outputs(out: Path, stem: str) -> list[Path]:
    """The three files of one image."""
    base = out / IMAGES / stem
    return [base.with_name(base.name + suffix) for suffix in OUTPUT_SUFFIXES]


def finished(record: Record | None, out: Path) -> bool:
    """Recorded as explained, and its three files are there."""
    return record is not None and record.ok and all(p.is_file() for p in outputs(out, record.stem))


def remove_temporary(out: Path) -> None:
    """Delete what a killed run left half-written (temporary files only; call with the folder locked)."""
    for folder in (out / IMAGES, out / "report"):
        for root, _, files in os.walk(folder):
            for name in files:
                if TEMPORARY.match(name):
                    Path(root, name).unlink(missing_ok=True)
    for probe in out.glob(".occlens-write-test-*"):
        probe.unlink(missing_ok=True)


def discard(out: Path, records: Iterable[Record]) -> None:
    """Delete the outputs of ``records`` (before their manifest rows go)."""
    for record in records:
        for path in outputs(out, record.stem):
            path.unlink(missing_ok=True)
    for root, dirs, _ in os.walk(out / IMAGES, topdown=False):
        for d in dirs:
            try:
                Path(root, d).rmdir()
            except OSError:
                pass  # not empty: something of the user's


# --------------------------------------------------------------------------------------------------
# the work per image


def decode(path: Path, preprocess, max_pixels: int | None) -> tuple[np.ndarray, float]:
    """Read and preprocess one image file: (C x H x W float32 array in [0, 1], seconds)."""
    start = time.perf_counter()
    try:
        image = preprocess(read_image(path, max_pixels=max_pixels))
    except OcclensError:
        raise
    except Exception as err:  # a decoder failing in a way read_image does not expect
        raise ImageError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    return image.numpy(), time.perf_counter() - start


def explain_decoded(job: Job, image: np.ndarray, seconds: float, args: argparse.Namespace, model, target):
    """Explain a decoded image with the command line's settings; the annotated result."""
    start = time.perf_counter()
    result = explain_image(args, model, torch.from_numpy(image), job.label, target)
    return annotate(result, model, job.path, args.top_k, seconds + time.perf_counter() - start)


def write(result, image: np.ndarray, labels: Sequence[str], stem: Path, true_class: bool | None) -> None:
    """STEM.png, STEM.npz and STEM.json, each atomically (``occlens explain``'s writer)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(result, torch.from_numpy(image), labels, stem, true_class)


def process(job: Job, args: argparse.Namespace, model, target: int | None, out: Path) -> Record:
    """The whole work for one image: decode, explain, write its files; a bad image gives a failed Record."""
    try:
        image, seconds = decode(job.path, model.preprocess, args.max_pixels)
        result = explain_decoded(job, image, seconds, args, model, target)
        write(result, image, model.labels, out / IMAGES / job.stem, args.also_true_class or None)
    except OcclensError as err:
        return failed(job, err)
    return record_of(job, result)


def record_of(job: Job, result) -> Record:
    p, meta = result.probabilities, result.meta
    return Record(
        key=job.key,
        path=str(job.path),
        stem=job.stem,
        status="ok",
        label=result.label,
        label_name=meta.get("label_name"),
        predicted=result.predicted,
        predicted_name=meta.get("predicted_name"),
        confidence=float(p[result.predicted]),
        label_probability=None if result.label is None else float(p[result.label]),
        loss=float(result.loss),
        seconds=float(meta.get("timings", {}).get("total_s", result.seconds)),
        finished=now(),
    )


def failed(job: Job, err: BaseException) -> Record:
    return Record(job.key, str(job.path), job.stem, "failed", label=job.label, error=str(err), finished=now())


# --------------------------------------------------------------------------------------------------
# scheduling: a pipeline on one machine


def run_jobs(jobs: list[Job], args, model, target: int | None, manifest: Manifest, bar: RunBar) -> None:
    """Run ``jobs`` and record each in ``manifest`` as it finishes (``args.workers`` = 0: one by one, here)."""
    try:
        workers = min(args.workers, len(jobs) // MIN_JOBS_PER_WORKER)  # starting a worker costs a few images
        if workers == 0:
            for job in jobs:
                bar.step(record(manifest, process(job, args, model, target, args.out)))
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, context, initializer=worker_start, initargs=(os.getpid(),))
        try:
            pipeline(jobs, args, model, target, manifest, bar, pool, workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def pipeline(jobs, args, model, target, manifest: Manifest, bar: RunBar, pool: ProcessPoolExecutor, workers: int):
    """Workers decode ahead and write behind; the model runs here; records follow the writes."""
    ahead = 2 * workers
    waiting = iter(jobs)
    decoding: deque[tuple[Job, Future]] = deque()
    writing: deque[tuple[Job, Future, Record]] = deque()

    def top_up() -> None:
        for job in waiting:
            decoding.append((job, pool.submit(decode, job.path, model.preprocess, args.max_pixels)))
            if len(decoding) >= ahead:
                return

    def drain(limit: int) -> None:
        while writing and (len(writing) > limit or writing[0][1].done()):
            job, future, rec = writing.popleft()
            try:
                future.result()
            except OcclensError as err:
                rec = failed(job, err)
            except BrokenProcessPool:
                raise worker_died(job) from None
            bar.step(record(manifest, rec))

    top_up()
    while decoding:
        job, future = decoding.popleft()
        top_up()
        try:
            image, seconds = future.result()
            result = explain_decoded(job, image, seconds, args, model, target)
        except OcclensError as err:
            bar.step(record(manifest, failed(job, err)))
            continue
        except BrokenProcessPool:
            raise worker_died(job) from None
        stem = args.out / IMAGES / job.stem
        writing.append(
            (
                job,
                pool.submit(write, result, image, model.labels, stem, args.also_true_class or None),
                record_of(job, result),
            )
        )
        drain(ahead)
    drain(0)


def record(manifest: Manifest, rec: Record) -> bool:
    manifest.add(rec)
    return rec.ok


def worker_died(job: Job) -> OcclensError:
    return OcclensError(
        f"a worker process died while the run was at {job.key} (out of memory, or a crash in an image decoder); "
        f"re-run to resume, or use --workers 0 to run everything in one process"
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


class RunBar(Line):
    """``images done/total, failures, images/s, ETA`` on one line of stderr; silent unless it is a TTY."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        super().__init__(stream, width)
        self.enabled = self.enabled and total > 0
        self.total = total
        self.done = self.failed = 0

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        elapsed = self.elapsed()
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bad = f", {self.failed} failed" if self.failed else ""
        gauge = self.gauge(self.done, self.total)
        self.draw(f"run {gauge} {self.done}/{self.total} images{bad}, {rate:.1f}/s, ETA {duration(eta)}")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


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


def print_summary(summary: Summary, done_now: int, seconds: float, rows: int = 30) -> None:
    rate = f", {done_now / seconds:.2f} images/s" if done_now and seconds > 0 else ""
    print(
        f"explained {summary.explained} of {summary.images} images ({done_now} this run in {duration(seconds)}{rate}); "
        f"{len(summary.failed)} failed"
    )
    if summary.accuracy is None:
        print("accuracy: - (no labels)")
    else:
        print(f"accuracy: {summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}%")
    if summary.mistakes:
        print("most confident mistakes:")
        print(f"  {'P(Q)':>6}  {'image':<32} {'predicted Q':<24} true K")
        for r in summary.mistakes:
            print(f"  {r.confidence:>6.3f}  {r.key[:32]:<32} {r.predicted_name[:24]:<24} {r.label_name}")
    if summary.classes:
        print(f"per class:\n  {'class':<28} {'images':>6} {'correct':>7} {'accuracy':>8} {'predicted':>9}")
        for c in summary.classes[:rows]:
            acc = f"{100 * c.correct / c.images:.1f}%" if c.images else "-"
            print(f"  {f'{c.cls} {c.name}'[:28]:<28} {c.images:>6} {c.correct:>7} {acc:>8} {c.predicted:>9}")
        if len(summary.classes) > rows:
            print(f"  ... {len(summary.classes) - rows} more classes in the report")
    if summary.failed:
        print("failed:")
        for r in summary.failed:
            print(f"  {r.key}: {r.error}")
