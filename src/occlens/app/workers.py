"""What the worker processes of a dataset run on one machine do (:mod:`occlens.app.pipeline`): decode an image
ahead of the model, write an image's files behind it. This module is all a worker imports to start (no model,
no engine): the first image does not wait for the workers, but the less they import, the sooner they help.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ImageError, OcclensError
from .options import Options
from .outputs import wants_figure, write_run_outputs

if TYPE_CHECKING:
    import numpy as np

    from ..core.result import OcclusionResult
    from ..models.preprocess import Preprocess

WORKER_OF = "OCCLENS_PIPELINE_OF"  # set, to the run's process id, in the environment of its worker processes


def decode_image(path: Path, preprocess: Preprocess, max_pixels: int | None) -> tuple[np.ndarray, float]:
    """Read and preprocess one image file: (C x H x W float32 array in [0, 1], seconds). Runs in the
    pipeline's worker processes too: it takes only the preprocessing, which pickles small."""
    from ..core.image import read_image

    start = time.perf_counter()
    try:
        image = preprocess(read_image(path, max_pixels=max_pixels))
    except OcclensError:
        raise
    except Exception as err:  # a decoder failing in a way read_image does not expect
        raise ImageError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    return image.numpy(), time.perf_counter() - start


def write_run(result: OcclusionResult, labels, stem: Path, options: Options) -> None:
    """One explained image's files in a dataset run, the figure where ``options.figures`` asks for it."""
    figure = wants_figure(options.figures, result.correct)
    assert result.image is not None  # a result just explained keeps its image (only a loaded one may lack it)
    write_run_outputs(result, result.image, labels, stem, options.also_true_class or None, figure)


_WORKER: dict = {}  # in each worker process: the run's class names and options (worker_start)


def write_in_worker(result: OcclusionResult, stem: Path) -> None:
    write_run(result, _WORKER["labels"], stem, _WORKER["options"])


def ready() -> int:
    """A task that says a worker has started (its process id)."""
    return os.getpid()


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
    import torch

    torch.set_num_threads(1)
