"""``occlens run --ray``: the images of a dataset run on Ray workers, one model load per worker.

Each worker is a Ray actor (:class:`Worker`): one process that loads the model once with
:func:`occlens.load_model` from the run's :class:`~occlens.models.ModelSource`, then explains *tasks*
of a few images with the plain run's per-image function, :func:`occlens.app.job.process`, into a
scratch folder of its own, and sends back each image's manifest record and the bytes of its files.
This process, the driver, writes them into DIR (each atomically, as the plain run does) and records
the image after them, so a ``--ray`` run and a plain run make the same files and either resumes the
other's DIR. With ``--shared-fs`` (DIR on a filesystem every node mounts at the same path) the workers
write the files straight into DIR themselves, each atomically, and send back only the records: the
driver then only records (it stays the one manifest writer) and keeps the report up to date.

Failures: a worker process that dies (a crash, the out-of-memory killer, a lost node) is restarted by
Ray and its tasks are run again there (``max_restarts``, ``max_task_retries``). A task whose worker
still dies on every try is split into one task per image, and each runs *alone* on an idle worker
(nothing queued behind it: a death then has one cause), so that only an image that kills its worker
by itself is recorded as failed; an image that fails on its own (an ``OcclensError``) is recorded as
failed, as in plain runs. Ctrl-C kills the workers and stops a local Ray instance; the manifest holds
exactly the images whose files were written.

Ray is optional (``pip install 'occlens[ray]'``) and imported only here, only when ``--ray`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..core.errors import ConfigError, OcclensError, first_line
from ..core.files import atomic_write
from ..core.progress import print_above
from ..core.records import Record
from ..core.settings import Settings
from ..core.source import ModelSource
from .manifest import now
from .options import Options
from .outputs import run_outputs

if TYPE_CHECKING:
    from .recording import Recorder

TASK_IMAGES = 4  # images per task at most: a worker that dies loses at most this much work
DEPTH = 2  # tasks queued on each worker, so that the next one is there when the current one ends
RESTARTS = 16  # times Ray starts a worker's process again after it died
TASK_RETRIES = 2  # tries of a task after the first, when its worker's process dies
NOTE_AFTER_S = 60.0  # say so when no worker has started after this long
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says once it has started: where it runs, and the model's load time or why it failed."""

    node: str
    pid: int
    device: str
    load_s: float
    error: OcclensError | None = None


@dataclass(frozen=True)
class Done:
    """One image done by a worker: its manifest record and, when explained (and not written by the worker
    itself, ``--shared-fs``), its files as (suffix, bytes)."""

    record: Record
    files: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class TaskResult:
    """What one task returns: the images it did and the worker process that did them."""

    pid: int
    done: tuple[Done, ...]


@dataclass
class WorkerStats:
    """The driver's count of one worker's work (for the summary)."""

    node: str = "-"
    device: str = "-"
    load_s: float | None = None
    pids: set[int] = field(default_factory=set)  # the worker processes seen: Ray replaces one that dies
    images: int = 0
    failed: int = 0
    lost: str | None = None  # why the worker is gone for good


# --------------------------------------------------------------------------------------------------
# options and connecting


def worker_count(options: Options) -> int:
    """``--workers``: an int once Options is built (None, its default, is resolved then)."""
    assert options.workers is not None
    return options.workers


def check_options(options: Options, source: ModelSource | None) -> None:
    """The Ray options, checked before any work (and Ray's presence, when ``ray`` is asked for)."""
    if not options.ray:
        asked = (("--address", options.address), ("--gpus-per-worker", options.gpus_per_worker),
                 ("--shared-fs", options.shared_fs or None))  # fmt: skip
        given = [flag for flag, value in asked if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to runs on Ray; add --ray")
        return
    import_ray()
    if worker_count(options) < 1:
        raise ConfigError(f"--workers must be 1 or more with --ray (the number of Ray workers), got {options.workers}")
    f = options.gpus_per_worker
    if f is not None and not (0 <= f <= 1 or (f > 1 and f == int(f))):
        raise ConfigError(
            f"--gpus-per-worker must be a fraction of one GPU (0 to 1, e.g. 0.25 to share a GPU between 4 "
            f"workers) or a whole number, got {f:g}"
        )
    if options.address is not None:
        parse_address(options.address)
    if source is None:
        raise ConfigError(
            "a run on Ray loads the model again in every worker: pass a model spec (a name or a file), or a "
            "LoadedModel from occlens.load_model, not a model built by hand"
        )
    kind, _, name = source.spec.partition(":")
    if kind in ("torchvision", "timm") and name and source.weights is None:
        raise ConfigError(
            f"--model {source.spec} without --weights has random weights, drawn anew in every Ray worker, so the "
            f"workers would explain different models; save a state dict (torch.save(model.state_dict(), PATH)) "
            f"and pass --weights PATH"
        )


def import_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, which is not installed here: pip install 'occlens[ray]'") from None
    return ray


def parse_address(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``ray://HOST:PORT`` to (host, port); None for ``auto``; else a ConfigError."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--address must be HOST:PORT (the head node's address, which `ray start --head` prints), "
            f"ray://HOST:PORT or auto, got {address!r}"
        )
    return host.strip("[]"), int(port)


def connect(ray: ModuleType, options: Options) -> bool:
    """Start a local Ray instance, or join the cluster at ``--address``; True if this run must shut Ray down."""
    if ray.is_initialized():  # the caller has connected already (occlens.cli.main called from a Ray driver)
        return False
    quiet = {"logging_level": logging.ERROR}
    if options.address is None:
        try:
            ray.init(address="local", num_cpus=max(worker_count(options), os.cpu_count() or 1), include_dashboard=False,
                     **quiet)  # fmt: skip
        except Exception as err:  # Ray fails to start in many ways: ports, /tmp, shared memory
            raise OcclensError(f"could not start a local Ray instance: {first_line(err)}") from None
        return True
    where = parse_address(options.address)
    if where is not None:  # Ray itself waits minutes on an address where nothing answers
        try:
            socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ConfigError(
                f"--address {options.address}: nothing answers there ({err.strerror or err}); start the cluster's head "
                f"node with `ray start --head` and pass the address it prints, or leave out --address for a local "
                f"Ray instance"
            ) from None
    try:
        ray.init(address=options.address, **quiet)
    except Exception as err:
        ray.shutdown()
        raise ConfigError(f"--address {options.address}: cannot join the Ray cluster: {first_line(err)}") from None
    return True


def gpus_per_worker(options: Options, workers: int, cluster_gpus: float, local: bool) -> float:
    """``--gpus-per-worker``, or by default the cluster's GPUs shared evenly by the workers (at most 1 each)."""
    f = options.gpus_per_worker
    if f is None:
        if options.device == "cpu" or cluster_gpus <= 0:
            return 0.0
        f = math.floor(min(1.0, cluster_gpus / workers) * 1e4) / 1e4  # Ray counts GPUs in 1/10000ths
    if local and f * workers > cluster_gpus + 1e-9:
        raise ConfigError(
            f"{workers} Ray workers with --gpus-per-worker {f:g} need {f * workers:g} GPUs, and this machine has "
            f"{cluster_gpus:g}; use fewer --workers or a fraction of a GPU each"
        )
    if f == 0 and (options.device or "").startswith("cuda"):
        raise ConfigError(
            f"--device {options.device} needs GPUs for the Ray workers, and they get none (the cluster has "
            f"{cluster_gpus:g}); pass --gpus-per-worker F"
        )
    return f


# --------------------------------------------------------------------------------------------------
# the worker


class Worker:
    """One Ray worker process (run as a Ray actor): loads the model once, then explains tasks of a few images."""

    def __init__(
        self, source: ModelSource, settings: Settings, options: Options, cwd: str, scratch: str | None = None
    ) -> None:
        import ray

        from ..models.source import load_source

        start = time.perf_counter()
        if os.path.isdir(cwd):  # relative --model, --labels, ... paths mean what they mean to the driver
            os.chdir(cwd)
        self.settings, self.options, self.model = settings, options, None
        self.scratch = scratch if scratch is not None and os.path.isdir(scratch) else None  # the driver's, when local
        error = None
        try:
            self.model = load_source(source, options.device)
        except OcclensError as err:
            error = err
        device = "-" if self.model is None else str(self.model.device)
        self.info_ = WorkerInfo(ray.util.get_node_ip_address(), os.getpid(), device, time.perf_counter() - start,
                                error)  # fmt: skip

    def info(self) -> WorkerInfo:
        return self.info_

    def explain(self, jobs: list, images: str | None = None) -> TaskResult:
        """Run :func:`occlens.app.job.process` on each job: into ``images`` (DIR/images on a shared filesystem),
        the records only; else in a scratch folder, the records and the files' bytes."""
        from .job import process

        model = self.model
        assert model is not None  # the driver gives no task to a worker whose model failed to load (its info)
        if images is not None:
            done = [Done(process(job, model, self.settings, self.options, Path(images)), ()) for job in jobs]
            return TaskResult(os.getpid(), tuple(done))
        done = []
        with tempfile.TemporaryDirectory(prefix="occlens-ray-", dir=self.scratch) as scratch:
            for job in jobs:
                record = process(job, model, self.settings, self.options, Path(scratch))
                files = [p for p in run_outputs(Path(scratch) / job.stem) if p.is_file()]
                suffix = len(Path(scratch, job.stem).name)
                done.append(Done(record, tuple((p.name[suffix:], p.read_bytes()) for p in files) if record.ok else ()))
                for path in files:
                    path.unlink(missing_ok=True)
        return TaskResult(os.getpid(), tuple(done))


# --------------------------------------------------------------------------------------------------
# the driver


def run_on_ray(
    jobs: list, source: ModelSource, settings: Settings, options: Options, images: Path, recorder: Recorder
) -> None:
    """Run ``jobs`` on Ray workers and record each with ``recorder`` (:class:`occlens.app.recording.Recorder`, from
    here) as its files are written under ``images``. The same contract as :func:`occlens.app.pipeline.run_jobs`."""
    if not jobs:
        return
    ray = import_ray()
    started = time.perf_counter()
    owner = False
    actors: list = []
    stats: list[WorkerStats] = []
    # on this machine the workers' scratch folders go in one of the driver's, which it removes however the run
    # ends (a worker killed mid-task cannot remove its own)
    scratch = tempfile.mkdtemp(prefix="occlens-ray-") if options.address is None else None
    try:
        owner = connect(ray, options)
        resources = ray.cluster_resources()
        size = max(1, min(TASK_IMAGES, len(jobs) // (DEPTH * worker_count(options))))
        tasks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        n = min(worker_count(options), len(tasks))
        gpus = gpus_per_worker(options, n, resources.get("GPU", 0.0), options.address is None)
        nodes = sum(1 for key in resources if key.startswith("node:") and key != "node:__internal_head__")
        if options.progress is not False:  # lines beside the run's bar (occlens.core.progress.print_above)
            print_above(
                f"ray: {'local instance' if options.address is None else options.address}, {nodes} node(s), "
                f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; {n} worker(s) with 1 CPU and "
                f"{gpus:g} GPU each, tasks of {size} image(s)"
            )
        if n > resources.get("CPU", 0) or n * gpus > resources.get("GPU", 0) + 1e-9:
            print_above("ray: the cluster has no room for every worker now; those that do not fit start when it grows")
        remote = ray.remote(Worker).options(num_cpus=1, num_gpus=gpus, max_restarts=RESTARTS,
                                            max_task_retries=TASK_RETRIES)  # fmt: skip
        actors = [remote.remote(source, settings, options, os.getcwd(), scratch) for _ in range(n)]
        stats = [WorkerStats() for _ in actors]
        shared = str(images.absolute()) if options.shared_fs else None
        began, seconds = schedule(ray, actors, tasks, images, recorder, stats, shared)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if owner:
            ray.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print_workers(stats, sum(s.images for s in stats), began - started, seconds)


def schedule(
    ray: ModuleType,
    actors: list,
    tasks: list,
    images: Path,
    recorder: Recorder,
    stats: list[WorkerStats],
    shared: str | None,
) -> tuple[float, float]:
    """Feed ``tasks`` to the workers as they start and finish; write (unless the workers write into ``shared``,
    DIR/images on a shared filesystem) and record every image here.

    Returns (when the first worker started, the seconds from then to the end), for the summary.
    """
    from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

    from .job import failed

    waiting = deque(tasks)
    alone: deque = deque()  # images to run by themselves on an idle worker (suspects of a worker's death)
    starting = {actor.info.remote(): i for i, actor in enumerate(actors)}
    running: dict = {}  # task ref -> (worker, its jobs, whether it runs alone)
    ready: set[int] = set()
    load: Counter[int] = Counter()
    began, noted = None, False

    def submit(i: int, jobs: list, by_itself: bool) -> None:
        running[actors[i].explain.remote(jobs, shared)] = (i, jobs, by_itself)
        load[i] += 1

    def feed() -> None:
        for i in sorted(ready):
            if alone:  # suspects first: workers drain, and the first idle one takes one, with nothing behind it
                if load[i] == 0:
                    submit(i, [alone.popleft()], True)
                continue
            while waiting and load[i] < DEPTH:
                submit(i, waiting.popleft(), False)

    while waiting or alone or running:
        if not running and not starting:
            reasons = "; ".join(sorted({s.lost for s in stats if s.lost}))
            raise OcclensError(f"every Ray worker has died ({reasons}); finished images are recorded: re-run to resume")
        timeout = None if ready or noted else NOTE_AFTER_S
        done, _ = ray.wait([*running, *starting], num_returns=1, timeout=timeout)
        if not done:
            print_above(f"ray: no worker has started after {NOTE_AFTER_S:g} s; is there room on the cluster?")
            noted = True
            continue
        ref = done[0]
        if ref in starting:
            i = starting.pop(ref)
            try:
                info = ray.get(ref)
            except RayActorError as err:  # the worker could not start at all (occlens missing on the node?)
                stats[i].lost = f"could not start: {first_line(err)}"
                continue
            if info.error is not None:
                raise type(info.error)(f"Ray worker on {info.node}: {info.error}")
            stats[i].node, stats[i].device, stats[i].load_s = info.node, info.device, info.load_s
            stats[i].pids.add(info.pid)
            ready.add(i)
            began = time.perf_counter() if began is None else began
        else:
            i, jobs, by_itself = running.pop(ref)
            load[i] -= 1
            try:
                result = ray.get(ref)
            except ActorDiedError as err:  # gone for good (restarts used up, node lost): others take its work
                ready.discard(i)
                stats[i].lost = first_line(err)
                if by_itself:
                    alone.extendleft(jobs)
                else:
                    waiting.appendleft(jobs)
            except RayActorError:  # the worker process died on every try of this task (or of one before it)
                if not by_itself:  # find the image that kills it: each image alone on an idle worker
                    alone.extend(jobs)
                else:
                    error = OcclensError(
                        f"the Ray worker process died {1 + TASK_RETRIES} times explaining this image on node "
                        f"{stats[i].node} (a crash or the out-of-memory killer; Ray's logs on that node say which)"
                    )
                    stats[i].failed += 1
                    recorder.add(failed(jobs[0], error))
            except RayTaskError as err:  # a bug, not bad input: as in plain runs, it stops the run
                if isinstance(err.cause, BaseException):
                    raise err.cause from err
                raise
            else:
                stats[i].pids.add(result.pid)
                for item in result.done:
                    stats[i].images += 1
                    stats[i].failed += not item.record.ok
                    recorder.add(save(item, images))
        feed()
    end = time.perf_counter()
    return (end, 0.0) if began is None else (began, end - began)


def save(item: Done, images: Path) -> Record:
    """Write one image's files under ``images`` as the plain run does (each atomically; the JSON last, as
    :func:`occlens.app.outputs.write_run_outputs` does); its record, to add after."""
    stem = images / item.record.stem
    for suffix, data in sorted(item.files, key=lambda f: f[0] == ".json"):
        path = stem.with_name(stem.name + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(path, data)
    return replace(item.record, finished=now())


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def print_workers(stats: list[WorkerStats], images: int, startup_s: float, seconds: float) -> None:
    """Per-worker throughput, after the run (``processes``: > 1 when Ray replaced a worker process that died)."""
    rate = f", {images / seconds:.2f} images/s" if seconds > 0 else ""
    nodes = len({s.node for s in stats if s.load_s is not None})
    out = sys.stdout  # printed while the run's bar is still drawn on stderr: each line above it
    print_above(
        f"ray: {len(stats)} worker(s) on {nodes} node(s): {images} images in {seconds:.1f} s once a worker had "
        f"started{rate} (start-up {startup_s:.1f} s)",
        out,
    )
    print_above("  worker  node             device  load s  images  failed  images/s  processes", out)
    for i, s in enumerate(stats, start=1):
        load = "-" if s.load_s is None else f"{s.load_s:.1f}"
        per_s = f"{s.images / seconds:.2f}" if seconds > 0 else "-"
        lost = f"  lost: {s.lost}" if s.lost else ""
        print_above(f"  {i:<6}  {s.node[:15]:<15}  {s.device[:6]:<6}  {load:>6}  {s.images:>6}  {s.failed:>6}  "
                    f"{per_s:>8}  {len(s.pids):>9}{lost}", out)  # fmt: skip
