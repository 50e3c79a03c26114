"""The dense engine: stream batches of occluded copies through the model.

Each batch is built on the model's device in one vectorised ``torch.where`` from
the image, the fill image and the windows' row/column masks, so memory holds one
batch at a time, never all R*C occluded copies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .allocator import keeps_freed_blocks
from .errors import ModelError, OcclensError
from .grid import Grid
from .scoring import log_probs, scores_of

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_AUTO_BATCH = 256
# On a CPU, small batches: glibc hands freed allocations above its mmap threshold (at most 32 MB: one
# activation of a few images) back to the OS, and the next batch faults every page in again. On
# EfficientNet-Lite0 (2 cores, benchmarks/cpu_batch.py) batch 32 took 16.1 s, 14.1 s of it in the
# kernel; batch 4 13.5 s in a fresh process and 7.4 s once glibc had raised its threshold.
CPU_AUTO_BATCH = 4
# Where the process keeps freed blocks (the occlens command; occlens.allocator), bigger batches pay:
# ResNet-18 12.9 s at 32 against 15.1 s at 4, Lite0 6.0 s against 6.2 s (cpu_batch.py --keep-freed).
# Other models (numpy, ONNX, endpoints) bring their own allocator, and fewer calls pay.
KEPT_AUTO_BATCH = CALLABLE_AUTO_BATCH = 32
Forward = Callable[[torch.Tensor], object]
Progress = Callable[[int, int], None]


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (CUDA: the driver's figure; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**31


def auto_batch_size(
    n_windows: int, image: torch.Tensor, device: torch.device, per_image_bytes: int | None, torch_model: bool = True
) -> int:
    """A batch size that fits in a quarter of free memory, capped where bigger batches stop paying
    (on a CPU: :data:`CPU_AUTO_BATCH` for torch models, :data:`KEPT_AUTO_BATCH` where the process
    keeps freed blocks, :data:`CALLABLE_AUTO_BATCH` for other models).

    ``per_image_bytes`` is the measured peak memory one more image adds to a forward pass
    when known (CUDA); otherwise 64x the input size is assumed, which holds for common CNNs in
    inference mode, where activations are freed layer by layer.
    """
    input_bytes = image.numel() * image.element_size()
    per_image = max(per_image_bytes or 64 * input_bytes, 3 * input_bytes)
    if device.type == "cuda":
        cap = MAX_AUTO_BATCH
    elif torch_model:
        cap = KEPT_AUTO_BATCH if keeps_freed_blocks() else CPU_AUTO_BATCH
    else:
        cap = CALLABLE_AUTO_BATCH
    fits = available_memory(device) // 4 // per_image
    return int(max(1, min(n_windows, cap, fits)))


def make_forward(forward: Forward, device: torch.device, conv_model: bool, precision: str, compile: bool) -> Forward:
    """The model call the engine makes: channels-last input for conv models, optional autocast and compile.

    Channels-last applies to the *input* only (the caller's model is not converted);
    with ``precision`` "bf16"/"fp16" the model runs under autocast and the scores are
    still turned into log-probabilities in float64. ``torch.compile`` wraps the model
    without changing it.
    """
    run = padded_batches(torch.compile(forward, dynamic=False)) if compile else forward
    dtype = PRECISIONS[precision]

    def call(batch: torch.Tensor):
        if conv_model:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return run(batch)
        with torch.autocast(device.type, dtype=dtype):
            return run(batch)

    return call


def padded_batches(compiled: Forward) -> Forward:
    """``compiled`` fed batches padded to the largest size it has seen, so a short last batch
    does not make torch.compile compile the model again (tensor outputs only: they are sliced back)."""
    largest = 0

    def call(batch: torch.Tensor):
        nonlocal largest
        n = batch.shape[0]
        largest = max(largest, n)
        if n == largest:
            return compiled(batch)
        pad = batch[:1].expand(largest - n, *batch.shape[1:])
        out = compiled(torch.cat([batch, pad]).contiguous(memory_format=_layout(batch)))
        return out[:n] if isinstance(out, torch.Tensor) and out.shape[:1] == (largest,) else compiled(batch)

    return call


def _layout(batch: torch.Tensor) -> torch.memory_format:
    is_cl = batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if is_cl else torch.contiguous_format


def window_masks(grid: Grid, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """B x 1 x H x W boolean masks of the windows ``indices`` (raster order), built in one shot."""
    (rs, re), (cs, ce) = grid.row_spans(), grid.col_spans()
    r, c = indices // grid.cols, indices % grid.cols
    as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    h = torch.arange(grid.height, device=device)
    w = torch.arange(grid.width, device=device)
    rows = (h >= as_t(rs)[r, None]) & (h < as_t(re)[r, None])  # B x H
    cols = (w >= as_t(cs)[c, None]) & (w < as_t(ce)[c, None])  # B x W
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def call_model(forward: Forward, batch: torch.Tensor, what: str, grad: bool = False):
    """``forward(batch)`` under inference mode (or with autograd on, ``grad=True``).

    A failure of the model becomes one ModelError line that names ``what`` was run;
    CUDA out-of-memory and occlens's own errors pass through.
    """
    mode = torch.enable_grad() if grad else torch.inference_mode()
    try:
        with torch.inference_mode(not grad), mode:
            return forward(batch)
    except (torch.cuda.OutOfMemoryError, OcclensError):
        raise  # out-of-memory is handled by the caller; adapters raise their own clear errors
    except Exception as err:  # the user's model failed: say where, keep the model's own message
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelError(
            f"the model failed on {what} (input {tuple(batch.shape)}, {batch.dtype}, {batch.device}): "
            f"{type(err).__name__}: {message}"
        ) from err


def halved(batch_size: int, device: torch.device, unit: str) -> int:
    """The batch size to retry with after CUDA ran out of memory: half, or a ModelError at one ``unit``."""
    if batch_size == 1:
        message = f"out of memory on {device} even one {unit} at a time; free memory or use device='cpu'"
        raise ModelError(message) from None
    torch.cuda.empty_cache()
    return max(1, batch_size // 2)


def _span(order: torch.Tensor, start: int, stop: int) -> str:
    """``windows A..B`` for the batch ``order[start:stop]`` (for messages)."""
    return f"windows {int(order[start])}..{int(order[stop - 1])}"


def _windows(scores: torch.Tensor | None, order: torch.Tensor, start: int, stop: int) -> str:
    """The windows whose scores are not finite, else the batch's span (for error messages)."""
    if scores is None:
        return _span(order, start, stop)
    rows = torch.nonzero(~torch.isfinite(scores.detach().cpu()).all(dim=1)).flatten()
    bad = order[start:stop].cpu()[rows].tolist()
    return f"window(s) {bad[:5]}" if bad else _span(order, start, stop)


def occluded_log_probs(
    forward: Forward,
    image: torch.Tensor,
    fill_image: torch.Tensor,
    grid: Grid,
    classes: Sequence[int],
    output: str,
    batch_size: int,
    progress: Progress | None = None,
    windows: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``log P(y=k | x_occl_i)`` for each class ``k`` in ``classes`` and each window ``i``.

    ``image`` and ``fill_image`` are C x H x W on the model's device and dtype.
    ``windows``: raster indices of the windows to score (default: all of them).
    Returns a float64 array of shape ``(len(classes), len(windows))`` and the batch size
    used: on CUDA out-of-memory the batch size is halved and the batch retried.
    """
    device = image.device
    order = torch.arange(grid.size) if windows is None else torch.as_tensor(np.asarray(windows, dtype=np.int64))
    order = order.to(device)
    n = len(order)
    out = np.empty((len(classes), n), dtype=np.float64)
    x, fill = image[None], fill_image[None]
    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        try:
            masks = window_masks(grid, order[start:stop], device)
            raw = call_model(forward, torch.where(masks, fill, x), _span(order, start, stop))
        except torch.cuda.OutOfMemoryError:
            batch_size = halved(batch_size, device, "image")
            continue
        scores = None
        try:
            scores = scores_of(raw, stop - start)
            logp = log_probs(scores, output, classes)
        except ModelError as err:
            raise ModelError(f"on the occluded images of {_windows(scores, order, start, stop)}: {err}") from None
        out[:, start:stop] = logp.T.numpy()
        start = stop
        if progress is not None:
            progress(start, n)
    return out, batch_size
