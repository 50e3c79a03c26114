"""Memory: how many occluded images a forward pass may take, the out-of-memory back-off, and the
occlens command's allocator setting.

glibc hands freed blocks above its mmap threshold (dynamic, at most 32 MB) back to the OS, and the
next batch of occluded images faults every page of its activations in again, zeroed by the kernel:
on 2 CPU cores more than half of a dense run's time (``benchmarks/cpu_batch.py``). Raising the
mmap and trim thresholds keeps those blocks in the heap for reuse. The setting is process-wide, so
only the ``occlens`` command makes it, for its own process; a library caller's process is left as
it is (set ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` to get the same).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.errors import ModelError

if TYPE_CHECKING:  # torch loads with the functions that use it: the command sets the allocator without it
    import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GB come from the heap and are reused
TRIM_THRESHOLD = 2 << 30  # the heap's free top is given back only beyond 2 GB
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
ENOUGH = 256 << 20  # an mmap threshold from the environment this high keeps a 32-image batch's blocks

_kept = False  # set once keep_freed_blocks() succeeds


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether they were set.

    Nothing is changed off Linux, without glibc, or where the environment already sets either
    threshold (the user's choice wins).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _kept
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


def give_back_freed() -> bool:
    """Hand the memory this process has freed back to the OS now (glibc's ``malloc_trim``), however
    :func:`keep_freed_blocks` set the thresholds: after a rare large allocation (a server's decoding of a
    large image), which should not stay with the process. Whether it could; nothing off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(trim(0))


def keeps_freed_blocks() -> bool:
    """Whether this process keeps freed large blocks: :func:`keep_freed_blocks` set it (the occlens
    command), or the environment raised glibc's mmap threshold to :data:`ENOUGH` or more."""
    if _kept:
        return True
    try:
        return int(os.environ.get("MALLOC_MMAP_THRESHOLD_", "0")) >= ENOUGH
    except ValueError:
        return False


MAX_AUTO_BATCH = 256  # on CUDA
# On a CPU, small batches: glibc hands freed allocations above its mmap threshold (at most 32 MB: one
# activation of a few images) back to the OS, and the next batch faults every page in again. On
# EfficientNet-Lite0 (2 cores, benchmarks/cpu_batch.py) batch 32 took 16.1 s, 14.1 s of it in the
# kernel; batch 4 13.5 s in a fresh process and 7.4 s once glibc had raised its threshold.
CPU_AUTO_BATCH = 4
# Where the process keeps freed blocks (the occlens command; keep_freed_blocks above), bigger batches pay:
# ResNet-18 12.9 s at 32 against 15.1 s at 4, Lite0 6.0 s against 6.2 s (cpu_batch.py --keep-freed).
# Other models (numpy, ONNX, endpoints) bring their own allocator, and fewer calls pay.
KEPT_AUTO_BATCH = CALLABLE_AUTO_BATCH = 32
# A model with a dense output (a number per pixel or more: a segmenter's N x C x H x W logits) takes 16 even in a
# library process. Its full-resolution output and the target's float64 scoring of it are output-sized blocks per
# copy, past glibc's 32 MB ceiling at 4 copies already, so the small batch saves few faults (LRASPP-MobileNetV3,
# 256²: 15.6 MB faulted in per window at batch 4, 23.3 at 16, 52.6 at 32), while each batch pays per-call work
# (thread hand-offs around each of ~200 small operations) that bigger batches share: 35 s of CPU at 16 against
# 68 s at 4 on 2 threads; 1 thread, without hand-offs, shows the faults' own price, 9 % at 16, 36 % at 32
# (benchmarks/segment_batch.py, results/segment_batch-cpu.txt). Against Captum's best batching: docs/targets.md.
# A classifier's output is a few numbers per image, a detector's a few boxes: they keep CPU_AUTO_BATCH.
DENSE_AUTO_BATCH = 16


def dense_output(image: torch.Tensor, output_elements: int) -> bool:
    """Whether a model's output for one image (``output_elements`` numbers) is dense: at least one number per
    pixel of ``image`` (C x H x W), as a segmenter's per-pixel class scores are, at full resolution or a
    quarter of it with many classes."""
    return output_elements >= image.shape[-1] * image.shape[-2]


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (CUDA: the driver's figure; CPU: MemAvailable)."""
    if device.type == "cuda":
        import torch

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
    n_windows: int,
    image: torch.Tensor,
    device: torch.device,
    per_image_bytes: int | None,
    torch_model: bool = True,
    output_elements: int = 0,
) -> int:
    """A batch size that fits in a quarter of free memory, capped where bigger batches stop paying
    (on a CPU: :data:`CPU_AUTO_BATCH` for torch models, :data:`DENSE_AUTO_BATCH` for torch models whose
    output for one image, ``output_elements`` numbers, is :func:`dense <dense_output>`,
    :data:`KEPT_AUTO_BATCH` where the process keeps freed blocks, :data:`CALLABLE_AUTO_BATCH` for other models).

    ``per_image_bytes`` is the measured peak memory one more image adds to a forward pass
    when known (CUDA); otherwise 64x the input size is assumed, which holds for common CNNs in
    inference mode, where activations are freed layer by layer.
    """
    input_bytes = image.numel() * image.element_size()
    per_image = max(per_image_bytes or 64 * input_bytes, 3 * input_bytes)
    if device.type == "cuda":
        cap = MAX_AUTO_BATCH
    elif torch_model:
        cap = KEPT_AUTO_BATCH if keeps_freed_blocks() else cpu_torch_batch(image, output_elements)
    else:
        cap = CALLABLE_AUTO_BATCH
    return fitting(n_windows, per_image, device, cap)


def cpu_torch_batch(image: torch.Tensor, output_elements: int) -> int:
    """The cap of a torch model's batch on a CPU in a process that does not keep freed blocks: 16 for a dense
    output (a segmenter), 4 otherwise (see :data:`DENSE_AUTO_BATCH`)."""
    return DENSE_AUTO_BATCH if dense_output(image, output_elements) else CPU_AUTO_BATCH


def fitting(n: int, per_item_bytes: int, device: torch.device, cap: int) -> int:
    """How many of ``n`` items of ``per_item_bytes`` each fit in a quarter of ``device``'s free memory,
    at most ``cap`` and at least 1: the one sizing rule of the dense and incremental engines."""
    fits = available_memory(device) // 4 // max(per_item_bytes, 1)
    return int(max(1, min(n, cap, fits)))


def halved(batch_size: int, device: torch.device, unit: str) -> int:
    """The batch size to retry with after CUDA ran out of memory: half, or a ModelError at one ``unit``."""
    if batch_size == 1:
        message = f"out of memory on {device} even one {unit} at a time; free memory or use device='cpu'"
        raise ModelError(message) from None
    import torch

    torch.cuda.empty_cache()
    return max(1, batch_size // 2)


def in_batches(n: int, batch_size: int, device: torch.device, unit: str, step: Callable[[int, int], None]) -> int:
    """Call ``step(start, stop)`` on consecutive slices of ``range(n)`` of ``batch_size`` items; on CUDA
    out-of-memory halve the batch size (:func:`halved`) and retry the slice. Returns the batch size used
    in the end. The one batching loop of the dense and incremental engines."""
    import torch

    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        try:
            step(start, stop)
        except torch.cuda.OutOfMemoryError:
            batch_size = halved(batch_size, device, unit)
            continue
        start = stop
    return batch_size
