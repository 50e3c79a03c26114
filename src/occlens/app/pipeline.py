"""Running a dataset run's images on one machine, as a pipeline: worker processes decode images ahead and
write each image's files (and figure) behind, the model runs in this process, and this process alone records
finished images (:class:`occlens.app.recording.Recorder`), each *after* its files are written.

A worker takes seconds to start (it imports torch, :mod:`occlens.app.workers`): this process does the first
image itself before starting them, and the next ones, whole, until one has started, so that the first image is
done as soon as the model is loaded; workers that never got an image (a run that ended first) are stopped, not
waited for.

The work per image is :func:`occlens.app.job.process`; it depends on nothing but its arguments, so any
scheduler can run it (:mod:`occlens.app.cluster` runs it on Ray workers, on the same terms).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import torch

from ..core.errors import OcclensError
from ..core.records import Record
from ..core.settings import Settings
from ..models.loaded import LoadedModel
from .job import Job, explain_image, failed, process, record_of
from .options import MIN_JOBS_PER_WORKER, Options
from .recording import Recorder
from .workers import WORKER_OF, decode_image, ready, worker_start, write_in_worker


def run_jobs(
    jobs: list[Job], model: LoadedModel, settings: Settings, options: Options, images: Path, recorder: Recorder
) -> None:
    """Run ``jobs`` and record each with ``recorder`` as it finishes (``options.workers`` = 0: one by one, here)."""
    workers = min(options.workers, len(jobs) // MIN_JOBS_PER_WORKER)  # starting a worker costs a few images
    if workers == 0:
        for job in jobs:
            recorder.add(process(job, model, settings, options, images))
        return
    # the first image before any worker starts: their start (each imports torch) would take the cores from it
    recorder.add(process(jobs[0], model, settings, options, images))
    jobs = jobs[1:]
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, initializer=worker_start,
                               initargs=(os.getpid(), tuple(model.labels), options))  # fmt: skip
    os.environ[WORKER_OF] = str(os.getpid())  # the workers know they are ours (see occlens.app.runs.run)
    threads = torch.get_num_threads()
    # the workers take cores too: a model whose threads wait for a core at every operation runs many times
    # slower (a tiny model ran 5x slower with 2 threads beside 2 busy workers on 2 cores)
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    unused = False
    try:
        unused = not pipeline(jobs, model, settings, options, images, recorder, pool, workers)
    finally:
        torch.set_num_threads(threads)
        if unused:  # every image was done before a worker started: no need to wait for them to
            stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        os.environ.pop(WORKER_OF, None)


def pipeline(
    jobs, model, settings, options, images, recorder: Recorder, pool: ProcessPoolExecutor, workers: int
) -> bool:
    """Workers decode ahead and write behind; the model runs here; records follow the writes. Until a worker has
    started, the images are done here, whole. Whether the workers got any image."""
    started = [pool.submit(ready) for _ in range(workers)]  # starts them; each is done once its worker has started
    waiting = iter(jobs)
    for job in waiting:
        recorder.add(process(job, model, settings, options, images))
        if any(f.done() for f in started):
            break
    else:
        return False
    ahead = 2 * workers
    decoding: deque[tuple[Job, Future]] = deque()
    writing: deque[tuple[Job, Future, Record]] = deque()

    def top_up() -> None:
        for job in waiting:
            decoding.append((job, pool.submit(decode_image, job.path, model.preprocess, options.max_pixels)))
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
    return True


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's worker processes now (they have no work: some may still be importing)."""
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14
    if stop is not None:
        stop()
        return
    for worker in list((getattr(pool, "_processes", None) or {}).values()):
        worker.terminate()


def worker_died(job: Job) -> OcclensError:
    return OcclensError(
        f"a worker process died while the run was at {job.key} (out of memory, a crash in an image decoder, or, "
        f'from a Python script, a call of occlens.run outside `if __name__ == "__main__":`); re-run to resume, '
        f"or use --workers 0 (workers=0) to run everything in one process"
    )
