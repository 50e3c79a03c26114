"""What incremental inference saves: multiply-accumulates per layer, dense vs planned (Krypton's Eq. 9-12).

A convolution's MACs per window are ``out_h * out_w * C_out * C_in / groups * k_h * k_w``
over its whole output map (dense) or over its changed box (incremental); a linear layer's
are ``in * out`` per row. Pointwise ops and pooling cost no MACs but move memory, and so
do the incremental engine's gathers: :func:`estimate` weighs those per element, so that
``engine="auto"`` picks the incremental engine only where it should be faster.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .incremental import Part, Plan, Step, model_state

# Rough machine constants, in MACs: the cost of moving one element (pointwise ops and copies are
# memory-bound, convolutions are not), of one gathered element, of running one of the model's ops
# (per batch), and of the incremental engine's extra work per region op (Python, index arithmetic,
# one gather). CPU: fitted on a 2-core x86 machine. CUDA: fitted on an H200 (benchmarks/gpu.sh):
# about 50 TMAC/s in fp32 (TF32) convolutions, about 150 MACs per element moved, and about 170 us
# of host time per incremental step and batch, where the incremental engine is bound by the host
# (its GPU time was a third of the dense engine's on ResNet-50, its wall time 1.4x).
ELEMENT_COST = {"cpu": 12.0, "cuda": 150.0}
GATHER_COST = {"cpu": 24.0, "cuda": 300.0}
OP_COST = {"cpu": 3e5, "cuda": 5e8}
REGION_OP_COST = {"cpu": 3e6, "cuda": 8e9}
MIN_SPEEDUP = 1.25  # auto picks the incremental engine only above this predicted speedup
# ... and only for runs of at least this many dense MACs: below, planning (tracing, regions) costs more
# than it can save. On an H200 planning took 20-100 ms, the dense run of ResNet-50 (3e12 MACs) 90 ms.
MIN_WORK = {"cpu": 1e9, "cuda": 5e12}


def dense_macs(model: nn.Module, image: torch.Tensor) -> float:
    """MACs of one forward pass of ``model`` on ``image`` (C x H x W): convolutions and matrix products,
    as PyTorch's FLOP counter counted them in :func:`counted` (or, never counted, in a pass of its own).
    What ``auto`` checks before it plans; ``inf`` where the counter cannot follow the model."""
    key = _macs_key(model, image)
    if key is not None and key not in _macs:
        with torch.inference_mode():
            counted(model, image, lambda: model(image[None]))
    return _macs.get(key, float("inf"))


def counted(model, image: torch.Tensor, run: Callable[[], object]):
    """``run()``, the clean forward pass of ``model`` on ``image``, its MACs counted on the way (once per model
    state and input shape): the pass the explanation makes anyway, so ``auto`` costs no forward pass of its own."""
    key = _macs_key(model, image)
    if key is None or key in _macs:
        return run()
    try:
        with _flop_counter() as counter:
            out = run()
        macs = counter.get_total_flops() / 2
    except Exception:  # the counter could not follow the model (or the model failed): run it as it is
        _remember(key, float("inf"))
        return run()
    _remember(key, macs)
    return out


def _flop_counter():
    """PyTorch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: its formulas, its counts), without the
    import of ``torch._dynamo`` its dispatch makes on first use (about 1.3 CPU-s, most of a first explanation's
    start-up, for a counter that never meets a compiled graph: the counted pass is the uncompiled one).

    Every ``TorchDispatchMode`` subclass's ``__torch_dispatch__`` is wrapped, as its class is made, in a lazy
    ``torch._dynamo.disable``; the counter's own, unwrapped (``__wrapped__``), is given to a subclass after it
    is made, so nothing wraps it again. Where a torch version lacks these parts, the counter as it is."""
    from torch.utils import flop_counter

    mode = getattr(flop_counter, "_FlopCounterMode", None)
    dispatch = getattr(getattr(mode, "__torch_dispatch__", None), "__wrapped__", None)
    if mode is None or dispatch is None or "torch._dynamo" in sys.modules:  # loaded anyway: nothing to save
        return flop_counter.FlopCounterMode(display=False)
    return _QuietCounter(_quiet_mode(mode, dispatch))


@functools.cache
def _quiet_mode(mode: type, dispatch: Callable) -> type:
    quiet = type("_QuietFlopCounterMode", (mode,), {})
    quiet.__torch_dispatch__ = dispatch  # set after the class is made: TorchDispatchMode's __init_subclass__ wraps
    return quiet


class _QuietCounter:
    """``FlopCounterMode(display=False)`` entered with ``mode`` as its dispatch mode (what its ``__enter__`` does)."""

    def __init__(self, mode: type) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.counter = FlopCounterMode(display=False)
        self.mode = mode

    def __enter__(self):
        c = self.counter
        c.flop_counts.clear()
        c.mod_tracker.__enter__()
        c.mode = self.mode(c)
        c.mode.__enter__()
        return c

    def __exit__(self, *exc):
        return self.counter.__exit__(*exc)


def _macs_key(model, image: torch.Tensor) -> tuple | None:
    state = model_state(model) if isinstance(model, nn.Module) else None
    return None if state is None else (state, tuple(image.shape), image.dtype, image.device)


def _remember(key: tuple, macs: float) -> None:
    _macs[key] = macs
    while len(_macs) > 64:
        del _macs[next(iter(_macs))]


_macs: dict = {}  # (model state, shape, dtype, device) -> MACs of one forward pass


@dataclass(frozen=True)
class Cost:
    """Per-window work of one plan: MACs dense and incremental, and elements moved by each engine."""

    dense_macs: float
    incremental_macs: float
    dense_elements: float
    incremental_elements: float
    gathered_elements: float
    ops: int  # the model's own ops (call nodes), run once per batch by the dense engine
    region_ops: int  # of those, the ones the incremental engine runs on regions

    @property
    def mac_saving(self) -> float:
        """Dense MACs / incremental MACs: the theoretical speedup of exact incremental inference."""
        return self.dense_macs / max(self.incremental_macs, 1.0)

    def predicted_speedup(self, device: str = "cpu", batch: float = 32, dense_batch: int = 32) -> float:
        """Dense time / incremental time as the cost model sees it: MACs, weighted memory traffic, op launches.

        ``batch``: windows per incremental batch, on average (see :func:`occlens.engines.incremental.mean_batch`).
        """
        kind = "cuda" if device == "cuda" else "cpu"
        e, g, op = ELEMENT_COST[kind], GATHER_COST[kind], OP_COST[kind]
        dense = self.dense_macs + e * self.dense_elements + op * self.ops / dense_batch
        per_batch = op * self.ops + REGION_OP_COST[kind] * self.region_ops
        incremental = self.incremental_macs + e * self.incremental_elements + g * self.gathered_elements
        return dense / max(incremental + per_batch / batch, 1.0)


def _macs_per_pixel(module: nn.Module | None, value: torch.Tensor) -> float:
    """MACs per output element's spatial position (conv) or per output row (linear); 0 for other ops."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.out_channels * module.in_channels / module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0.0


def cost(plan: Plan) -> Cost:
    """Count the work of ``plan`` per window (averaged over its parts, by their number of windows; each part
    counted once and kept with it)."""
    parts = [(len(p.windows) / plan.grid.size, p.memo(("cost",), lambda p=p: _part_cost(plan, p))) for p in plan.parts]
    fields = zip(*[[w * v for v in c[:5]] for w, c in parts], strict=True)
    ops = max(c[5] for _, c in parts)
    region_ops = round(sum(w * c[6] for w, c in parts))
    return Cost(*(sum(f) for f in fields), ops, region_ops)


def _part_cost(plan: Plan, part: Part) -> tuple:
    dense_macs = incremental_macs = dense_el = incremental_el = gathered = 0.0
    ops = sum(step.kind not in ("const", "input") for step in part.steps)
    region_ops = sum(step.box is not None for step in part.steps)
    regions = {step.node for step in part.steps if step.box is not None}
    for step in part.steps:
        value = plan.clean[step.node]
        if step.kind in ("const", "shape", "input") or not isinstance(value, torch.Tensor):
            continue
        full = _full_macs(step, value)
        dense_macs += full
        dense_el += value[0].numel()
        if step.box is None:  # dense in the incremental engine too
            incremental_macs += full
            incremental_el += value[0].numel()
            gathered += _densified(plan, step, regions)
            continue
        share = step.box.h * step.box.w / (value.shape[-2] * value.shape[-1])
        incremental_macs += full * share
        incremental_el += value[0].numel() * share
        if step.via is not None and step.pads is not None:
            gathered += plan.clean[step.node.args[0]].shape[1] * step.via.ctx_h * step.via.ctx_w
        elif step.kind in ("pointwise", "cat"):
            gathered += value.shape[1] * step.box.h * step.box.w * (len(step.node.all_input_nodes) > 1)
    return dense_macs, incremental_macs, dense_el, incremental_el, gathered, ops, region_ops


def _full_macs(step: Step, value: torch.Tensor) -> float:
    per = _macs_per_pixel(step.module, value)
    if isinstance(step.module, nn.Linear):
        return per * value[0].numel() / step.module.out_features
    return per * value.shape[-2] * value.shape[-1] if value.ndim == 4 else 0.0


def _densified(plan: Plan, step: Step, regions: set) -> float:
    """Elements copied to make this dense step's region inputs dense."""
    if step.kind != "dense":
        return 0.0
    return float(sum(plan.clean[n][0].numel() for n in step.node.all_input_nodes if n in regions))
