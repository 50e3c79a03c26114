"""The model call every engine makes: one wrapper for channels-last input, autocast and torch.compile,
and one place where a failing model becomes a clear error."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..core.errors import ModelError, OcclensError, first_line, warn

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # of each of core.checks.PRECISIONS
Forward = Callable[[torch.Tensor], object]
CPU_INSTRUCTIONS = {"bf16": "AVX512-BF16, AMX or AVX-512", "fp16": "AVX512-FP16 or AMX-FP16"}


@functools.cache
def cpu_has_native(precision: str) -> bool:
    """Whether this CPU runs ``precision`` ("bf16"/"fp16") convolutions and matrix products natively.

    oneDNN's own checks (what decides whether its reduced-precision kernels run); without oneDNN,
    the CPU's instruction sets. Without them, autocast on a CPU emulates the type and runs slower
    than fp32: 7x for bf16 on an AVX2-only CPU, 29x for fp16 on an AVX-512 CPU without AVX512-FP16.
    """
    mkldnn = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, mkldnn):
        return bool(getattr(torch.ops.mkldnn, mkldnn)())
    cpu = torch.cpu
    if precision == "bf16":
        return bool(getattr(cpu, "_is_avx512_bf16_supported", bool)() or getattr(cpu, "_is_amx_tile_supported", bool)())
    return bool(getattr(cpu, "_is_amx_fp16_supported", bool)())


def runnable_precision(precision: str, device: torch.device) -> str:
    """``precision``, or "fp32" (with a warning) where it would run slower than fp32: bf16/fp16 on a CPU without
    native support. fp32 computes the same map, exactly, and faster there; the result records what ran."""
    if precision == "fp32" or device.type != "cpu" or cpu_has_native(precision):
        return precision
    warn(
        f"precision={precision!r} has no native support on this CPU (needs {CPU_INSTRUCTIONS[precision]}) and "
        f"would run several times slower than fp32; running fp32 (exact). Use {precision} on a GPU"
    )
    return "fp32"


def make_forward(forward: Forward, device: torch.device, conv_model: bool, precision: str, compile: bool) -> Forward:
    """The model call the engine makes: channels-last input for conv models, optional autocast and compile.

    Channels-last applies to the *input* only (the caller's model is not converted);
    with ``precision`` "bf16"/"fp16" the model runs under autocast and the scores are
    still turned into log-probabilities in float64. ``torch.compile`` wraps the model
    without changing it.
    """
    run = padded_batches(torch.compile(forward, dynamic=False)) if compile else forward
    dtype = AUTOCAST[precision]

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
        message = first_line(err)
        raise ModelError(
            f"the model failed on {what} (input {tuple(batch.shape)}, {batch.dtype}, {batch.device}): "
            f"{type(err).__name__}: {message}"
        ) from err
