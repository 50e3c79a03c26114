"""The exact incremental engine for volumes: per window, recompute only the block of each layer it changes.

The rules of :mod:`occlens.engines.incremental` on three spatial axes. The model is traced with ``torch.fx``
(frozen ``BatchNorm3d`` folded into the ``Conv3d`` before it, on copies: the caller's model is not changed); one
clean pass caches every node's output. For a batch of windows every node's value is then

* a *region*: the cached output except inside a :class:`~occlens.graph.regions.Block` (a box in depth, rows and
  columns, one common size per layer, its start per window), whose ``B x C x d x h x w`` values are carried;
* *dense*: the full ``B x C x D x H x W`` output, as the dense engine computes it;
* *constant*: independent of the input, taken from the cache.

``Conv3d`` (zero padding, any stride, dilation, groups), ``MaxPool3d`` and ``AvgPool3d`` read each window's
context (the cached, padded input with the region pasted in) and run the layer's own op on the batch of contexts;
pointwise ops (``BatchNorm3d`` in eval mode, activations, dropout in eval mode, arithmetic with per-channel
constants) run on the region's values; residual adds and channel concatenations first align their inputs on the
union of their blocks; a global average pool (``AdaptiveAvgPool3d(1)``) adds each window's change of its
region's sum to the clean mean. Everything else (flatten, linear, any op the engine does not know), and any
region covering most of its map, is computed densely: the result is always the model's own output.

:func:`mac_bound` is the engine's theoretical speedup from the traced graph (dense MACs over incremental MACs);
:func:`worth_it` is ``engine="auto"``'s rule for volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelError
from ..core.grid import VolumeGrid
from ..core.progress import Progress
from ..core.scoring import model_output
from ..core.targets import Score
from ..graph.ops import (
    CAT_FUNCTIONS,
    SlidingVolume,
    bound_arguments,
    hooked,
    in_place,
    pointwise_call,
    pointwise_module,
    sliding_volume,
)
from ..graph.regions import Block, joined, spread, window_block
from ..graph.tracing import Unsupported, agrees, fold_batch_norms, trace
from . import costmodel
from .incremental import DENSE_FRACTION, MAX_BATCH, _call, _check_exclusive, _frees, _shape_only, clean_pass
from .memory import fitting, in_batches

AXES = 3  # depth, rows, columns
# The engine's own batches are channels-last: PyTorch's CPU Conv3d and MaxPool3d run about 2x faster on them (a
# batch of 16 contexts of 8 x 20³: 32 ms against 63 ms per convolution, 2 cores), and it changes only rounding.
LAST = torch.channels_last_3d


@dataclass(frozen=True, eq=False)
class VolumeStep:
    """One graph node: its kind ("input", "const", "shape", "sliding", "pointwise", "cat", "mean", "dense"), block
    and op ("mean": a global average pool of a region, dense after it)."""

    node: fx.Node
    kind: str
    module: nn.Module | None = None
    block: Block | None = None  # the region of its output, for region kinds
    context: tuple[np.ndarray, tuple[int, ...]] | None = None  # sliding: the starts and size of what it reads
    slide: SlidingVolume | None = None
    pads: tuple[int, ...] | None = None  # sliding: F.pad of its input's clean map; None: reads the block as it is


@dataclass(frozen=True, eq=False)
class VolumePlan:
    """An incremental run of one model on one volume and the windows of one :class:`VolumeGrid`."""

    steps: tuple[VolumeStep, ...]
    output: Any  # the output node's argument
    clean: dict  # node -> its clean output (1 x C x D x H x W)
    grid: VolumeGrid
    frees: dict  # node -> the values no step after it reads

    @property
    def device(self) -> torch.device:
        return next(v.device for v in self.clean.values() if isinstance(v, torch.Tensor))


def plan_volume(
    model: nn.Module,
    x: torch.Tensor,
    grid: VolumeGrid,
    reference: torch.Tensor | None = None,
    dense_fraction: float = DENSE_FRACTION,
) -> VolumePlan:
    """Trace ``model``, run it once on the C x D x H x W volume ``x`` and plan every node for ``grid``'s windows.

    ``reference``: the model's own scores on ``x``; the traced graph must reproduce them. Raises
    :class:`~occlens.graph.tracing.Unsupported` when the model cannot run incrementally.
    """
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        raise Unsupported("global module hooks are registered")
    graph = trace(model)
    modules = fold_batch_norms(graph, {n: model.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"})
    with torch.inference_mode():
        clean, out = clean_pass(model, graph, x[None].contiguous(memory_format=LAST), modules)
        clean = {n: _last(v) for n, v in clean.items()}  # one channel is no format: make every map channels-last
    if reference is not None and not agrees(model_output(out, 1), reference):
        raise Unsupported("the traced graph does not reproduce the model's scores")
    starts = np.stack([s[k] for (s, _), k in zip(grid.spans(), np.unravel_index(np.arange(grid.size), grid.shape),
                                                    strict=True)], axis=1)  # fmt: skip
    input_block = window_block(grid.image_shape, starts, grid.patch)
    changes_input = {n for n in graph.nodes if in_place(n, modules.get(n))}
    kinds: dict[fx.Node, str] = {}
    blocks: dict[fx.Node, Block] = {}
    steps = []
    first = True
    output = None
    for node in graph.nodes:
        if node.op == "output":
            output = node.args[0]
            break
        if node.op == "placeholder" and first:
            first, step = False, VolumeStep(node, "input", block=input_block)
        elif node.op in ("placeholder", "get_attr") or all(kinds[n] == "const" for n in node.all_input_nodes):
            step = VolumeStep(node, "const")
        else:
            step = _region_step(node, modules.get(node), kinds, blocks, clean, dense_fraction)
        if node in changes_input and step.kind in ("sliding", "pointwise", "cat", "dense"):
            _check_exclusive(node, kinds, modules)
        kinds[node] = "region" if step.block is not None else "dense" if step.kind == "mean" else step.kind
        if step.block is not None:
            blocks[node] = step.block
        steps.append(step)
    return VolumePlan(tuple(steps), output, clean, grid, _frees(graph, output))


def _last(value):
    """A 5-D map channels-last (a copy where it was not); anything else as it is."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.ndim == 2 + AXES:
        return value.contiguous(memory_format=LAST)
    return value


def _voxel_constant(value) -> bool:
    """Whether a constant broadcasts over a 5-D map without varying across voxels."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float, bool, type(None), str, torch.dtype))
    return value.ndim <= 5 and all(s == 1 for s in value.shape[-AXES:])


def _region_step(node: fx.Node, module, kinds: dict, blocks: dict, clean: dict, dense_fraction: float) -> VolumeStep:
    """The step of a node with at least one input that is not constant."""
    ins = node.all_input_nodes
    regions = [n for n in ins if kinds[n] == "region"]
    if any(kinds[n] in ("dense", "shape") for n in ins):
        return VolumeStep(node, "shape" if _shape_only(node, kinds) else "dense", module)
    if _shape_only(node, kinds):
        return VolumeStep(node, "shape", module)
    value = clean[node]
    if not (isinstance(value, torch.Tensor) and value.ndim == 2 + AXES and value.shape[0] == 1):
        return VolumeStep(node, "dense", module)
    if node.op == "call_module" and len(regions) == 1 and len(ins) == 1 and len(node.args) == 1 and not node.kwargs:
        (src,) = regions
        slide = sliding_volume(module)
        if slide is not None and clean[src].ndim == 2 + AXES:
            sizes, out_sizes = tuple(clean[src].shape[2:]), tuple(value.shape[2:])
            out, starts, size = spread(blocks[src], slide.reaches, out_sizes)
            if out.fraction > dense_fraction:
                return VolumeStep(node, "dense", module)
            after = [r.pad_after(n, o) for r, n, o in zip(slide.reaches, sizes, out_sizes, strict=True)]
            pads = tuple(p for r, a in zip(slide.reaches[::-1], after[::-1], strict=True) for p in (r.pad, a))
            reads_only = size == blocks[src].extent and np.array_equal(starts, blocks[src].starts)
            return VolumeStep(node, "sliding", module, out, (starts, size), slide, None if reads_only else pads)
        if pointwise_module(module):
            return _aligned(node, module, regions, blocks, "pointwise", dense_fraction)
        if _global_mean(module):
            return VolumeStep(node, "mean", module)
        return VolumeStep(node, "dense", module)
    consts = [clean[n] for n in ins if kinds[n] == "const"]
    spatial = {tuple(clean[n].shape[2:]) for n in regions}
    if spatial != {tuple(value.shape[2:])} or not all(_voxel_constant(v) for v in consts):
        return VolumeStep(node, "dense", module)
    flips = (node.op == "call_method" and node.target == "flip") or node.target is torch.flip
    if pointwise_call(node) and not flips:  # flip(-3) is a channel flip in 2-D, a depth flip here
        return _aligned(node, module, regions, blocks, "pointwise", dense_fraction)
    if node.op == "call_function" and node.target in CAT_FUNCTIONS and not consts:
        bound = bound_arguments(node)
        parts = bound.get("tensors", node.args[0] if node.args else ()) or ()
        if bound.get("dim", 0) in (1, -4) and all(isinstance(p, fx.Node) and p in blocks for p in parts):
            return _aligned(node, module, regions, blocks, "cat", dense_fraction)
    return VolumeStep(node, "dense", module)


def _global_mean(module) -> bool:
    """Whether ``module`` is a global average pool (``AdaptiveAvgPool3d(1)``), which a region changes by the sum of
    its own changes: the mean of the clean map plus theirs over the map's size, no dense map needed."""
    if not isinstance(module, nn.AdaptiveAvgPool3d) or type(module).forward is not nn.AdaptiveAvgPool3d.forward:
        return False
    return not hooked(module) and nn.modules.utils._triple(module.output_size) == (1, 1, 1)


def _aligned(node: fx.Node, module, regions: list, blocks: dict, kind: str, dense_fraction: float) -> VolumeStep:
    block = joined([blocks[n] for n in regions])
    if block.fraction > dense_fraction:
        return VolumeStep(node, "dense", module)
    return VolumeStep(node, kind, module, block=block)


# ---------------------------------------------------------------------------------------------
# running a batch of windows


@dataclass(frozen=True, eq=False)
class Changed:
    """A node's value for a batch: the cached map except inside ``block`` (at the batch's windows), ``values``."""

    values: torch.Tensor  # B x C x *block.extent
    block: Block
    node: fx.Node


def _within(starts, size) -> tuple[slice, ...]:
    """Every channel of the block of ``size`` at ``starts``: an index of a C x ... map."""
    return (slice(None),) + tuple(slice(int(s), int(s) + int(n)) for s, n in zip(starts, size, strict=True))


def _pasted(base: torch.Tensor, offset, region: Changed, windows: np.ndarray, at: np.ndarray, size) -> torch.Tensor:
    """B x C x ``size`` blocks of the map ``base`` (C x ..., coordinate ``p`` at index ``p + offset``) starting at
    ``at`` (B x axes), with the region's values pasted in where its block overlaps them."""
    out = torch.empty((len(windows), base.shape[0], *size), dtype=base.dtype, device=base.device, memory_format=LAST)
    mine = region.block.starts[windows]
    extent = np.asarray(region.block.extent)
    low, high = np.maximum(mine, at), np.minimum(mine + extent, at + np.asarray(size))
    for b in range(len(windows)):
        out[b] = base[_within(at[b] + offset, size)]
        if np.all(low[b] < high[b]):
            span = high[b] - low[b]
            out[b][_within(low[b] - at[b], span)] = region.values[b][_within(low[b] - mine[b], span)]
    return out


class VolumeBatch:
    """The windows of one batch (raster indices) and what the run keeps across batches (padded clean maps)."""

    def __init__(self, plan: VolumePlan, windows: np.ndarray, padded: dict) -> None:
        self.plan, self.windows, self.padded = plan, windows, padded
        self._dense: dict[fx.Node, torch.Tensor] = {}

    def dense(self, region: Changed) -> torch.Tensor:
        """The region scattered into B copies of the cached map."""
        if region.node not in self._dense:
            clean = self.plan.clean[region.node]
            at = np.zeros((len(self.windows), AXES), dtype=np.int64)
            self._dense[region.node] = _pasted(clean[0], 0, region, self.windows, at, tuple(clean.shape[2:]))
        return self._dense[region.node]

    def align(self, region: Changed, block: Block) -> torch.Tensor:
        """The region's values on ``block`` (a block holding the region's own)."""
        if region.block is block or region.block.same_as(block):
            return region.values
        base = self.plan.clean[region.node][0]
        return _pasted(base, 0, region, self.windows, block.starts[self.windows], block.extent)

    def context(self, step: VolumeStep, region: Changed) -> torch.Tensor:
        """The contexts a sliding step reads: its input's clean map, padded, with the region pasted in."""
        assert step.context is not None and step.slide is not None and step.pads is not None  # a gathering step
        src = step.node.args[0]
        key = (src, step.pads, step.slide.pad_value)
        if key not in self.padded:
            padded = F.pad(self.plan.clean[src], step.pads, value=step.slide.pad_value)
            self.padded[key] = padded.contiguous(memory_format=LAST)[0]  # copies from it stay channels-last
        offset = np.asarray([r.pad for r in step.slide.reaches])
        starts, size = step.context
        return _pasted(self.padded[key], offset, region, self.windows, starts[self.windows], size)


def _input(plan: VolumePlan, batch: VolumeBatch, x: torch.Tensor, fill: torch.Tensor, step: VolumeStep) -> Changed:
    """The occluded input on each window's input block: the volume's voxels, the fill inside the window."""
    block, grid = step.block, plan.grid
    assert block is not None  # the input step has the input block
    values = torch.empty((len(batch.windows), x.shape[0], *block.extent), dtype=x.dtype, device=x.device,
                         memory_format=LAST)  # fmt: skip
    for b, i in enumerate(batch.windows):
        values[b] = x[_within(block.starts[i], block.extent)]
        front, back, top, bottom, left, right = grid.window(int(i))
        start, size = np.asarray([front, top, left]), (back - front, bottom - top, right - left)
        values[b][_within(start - block.starts[i], size)] = fill[_within(start, size)]
    return Changed(values, block, step.node)


def run_volume_batch(plan: VolumePlan, windows: np.ndarray, x: torch.Tensor, fill: torch.Tensor, padded: dict):
    """The model's raw output on the occluded copies of ``windows`` (raster indices), batch first."""
    batch = VolumeBatch(plan, windows, padded)
    env: dict[fx.Node, object] = {}
    for step in plan.steps:
        env[step.node] = _run_step(step, env, batch, x, fill)
        for n in plan.frees.get(step.node, ()):
            env.pop(n, None)

    def final(n: fx.Node):
        v = env[n]
        if isinstance(v, Changed):
            return batch.dense(v)
        if plan.clean.get(n) is v and isinstance(v, torch.Tensor):  # the output does not depend on the input
            return v.expand(len(windows), *v.shape[1:])
        return v

    return fx.node.map_arg(plan.output, final)


def _run_step(step: VolumeStep, env: dict, batch: VolumeBatch, x: torch.Tensor, fill: torch.Tensor):
    plan, node = batch.plan, step.node
    if step.kind == "const":
        return plan.clean[node]
    if step.kind == "input":
        return _input(plan, batch, x, fill, step)
    if step.kind == "sliding":
        assert step.slide is not None and step.block is not None  # a sliding step has both
        region: Changed = env[node.args[0]]
        values = region.values if step.pads is None else batch.context(step, region)
        return Changed(step.slide.op(values), step.block, node)
    if step.kind == "mean":
        return _mean(plan, batch, env[node.args[0]], node)
    if step.kind in ("pointwise", "cat"):
        assert step.block is not None  # region kinds have a block
        block = step.block

        def aligned(n: fx.Node):
            v = env[n]
            return batch.align(v, block) if isinstance(v, Changed) else v

        args, kwargs = fx.node.map_arg(node.args, aligned), fx.node.map_arg(node.kwargs, aligned)
        return Changed(_call(node, step.module, args, kwargs), block, node)

    def value(n: fx.Node):  # dense and shape steps
        v = env[n]
        if not isinstance(v, Changed):
            return v
        if step.kind == "shape":
            return torch.empty((len(batch.windows), *plan.clean[n].shape[1:]), dtype=v.values.dtype, device="meta")
        return batch.dense(v)

    return _call(node, step.module, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value))


def _mean(plan: VolumePlan, batch: VolumeBatch, region: Changed, node: fx.Node) -> torch.Tensor:
    """B x C x 1 x 1 x 1: the clean map's mean plus, per window, its region's change summed over the map's size."""
    base, extent, axes = plan.clean[region.node][0], region.block.extent, tuple(range(2, 2 + AXES))
    before = torch.stack([base[_within(region.block.starts[i], extent)] for i in batch.windows])
    change = region.values.double().sum(axes, keepdim=True) - before.double().sum(axes, keepdim=True)
    clean = plan.clean[node]
    return (clean.double() + change / math.prod(base.shape[1:])).to(clean.dtype)


def volume_batch(plan: VolumePlan, n_windows: int) -> int:
    """Windows per batch: what fits in a quarter of free memory, capped as the 2-D engine caps it."""
    per_window = 0
    for step in plan.steps:
        value = plan.clean[step.node]
        if step.kind in ("const", "shape") or not isinstance(value, torch.Tensor):
            continue
        elements = value[0].numel() if step.block is None else value.shape[1] * math.prod(step.block.extent)
        if step.context is not None:
            elements += plan.clean[step.node.args[0]].shape[1] * math.prod(step.context[1])
        per_window = max(per_window, elements * value.element_size())
    return fitting(n_windows, 8 * per_window, plan.device, MAX_BATCH["cuda" if plan.device.type == "cuda" else "cpu"])


def volume_scores(
    plan: VolumePlan,
    x: torch.Tensor,
    fill: torch.Tensor,
    score: Score,
    batch_size: int,
    progress: Progress | None = None,
    windows: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``score`` of every window's occluded copy of ``x`` (C x D x H x W, the planned volume; ``fill`` alike, on
    the model's device and dtype), or of the raster ``windows`` only (the drill-down's choice): T x windows
    float64 and the batch size used, as the dense path's :func:`occlens.engines.volume.occluded_scores` returns
    them."""
    ids = np.arange(plan.grid.size) if windows is None else np.asarray(windows, dtype=np.int64)
    n = len(ids)
    out: list[np.ndarray] = []
    padded: dict = {}

    def step(start: int, stop: int) -> None:
        count = stop - start
        with torch.inference_mode():
            raw = run_volume_batch(plan, ids[start:stop], x, fill, padded)
        try:
            got = np.asarray(score(model_output(raw, count), count), dtype=np.float64).reshape(count, -1).T
        except ModelError as err:
            raise ModelError(f"on the occluded copies of windows {ids[start]}..{ids[stop - 1]}: {err}") from None
        if not out:
            out.append(np.empty((got.shape[0], n), dtype=np.float64))
        out[0][:, start:stop] = got
        if progress is not None:
            progress(stop, n)

    size = in_batches(n, batch_size, x.device, "window", step)
    return (out[0] if out else np.empty((0, n))), size


# ---------------------------------------------------------------------------------------------
# what it saves


@dataclass(frozen=True)
class VolumeCost:
    """Per-window work of a plan: MACs dense and incremental, elements each engine moves, steps on regions."""

    dense_macs: float
    incremental_macs: float
    dense_elements: float
    incremental_elements: float
    region_steps: int

    @property
    def mac_bound(self) -> float:
        """Dense MACs / incremental MACs: the speedup exact incremental inference cannot beat."""
        return self.dense_macs / max(self.incremental_macs, 1.0)

    def predicted_speedup(self, device: str = "cpu") -> float:
        """Dense time / incremental time as :mod:`occlens.engines.costmodel`'s constants see it: MACs and elements
        moved (a context gathered counts as moved twice), and a per-window copy per region step."""
        kind = "cuda" if device == "cuda" else "cpu"
        e, op = costmodel.ELEMENT_COST[kind], costmodel.OP_COST[kind]
        dense = self.dense_macs + e * self.dense_elements
        incremental = self.incremental_macs + costmodel.GATHER_COST[kind] * self.incremental_elements
        return dense / max(incremental + 2 * op * self.region_steps, 1.0)


def volume_cost(plan: VolumePlan) -> VolumeCost:
    """Count a plan's work per window, from the traced graph: ``Conv3d`` and ``Linear`` MACs (dense over the
    whole output map, incremental over each region step's block) and the elements every step writes."""
    dense_macs = incremental_macs = dense_el = incremental_el = 0.0
    for step in plan.steps:
        value = plan.clean[step.node]
        if step.kind in ("const", "shape", "input") or not isinstance(value, torch.Tensor):
            continue
        full = _macs(step.module, value)
        dense_macs += full
        dense_el += value[0].numel()
        share = 1.0 if step.block is None else math.prod(step.block.extent) / math.prod(step.block.sizes)
        incremental_macs += full * share
        incremental_el += value[0].numel() * share
        if step.context is not None and step.pads is not None:
            incremental_el += plan.clean[step.node.args[0]].shape[1] * math.prod(step.context[1])
    region_steps = sum(step.block is not None for step in plan.steps)
    return VolumeCost(dense_macs, incremental_macs, dense_el, incremental_el, region_steps)


def _macs(module, value: torch.Tensor) -> float:
    if isinstance(module, nn.Conv3d):
        per = module.out_channels * module.in_channels / module.groups * math.prod(module.kernel_size)
        return per * math.prod(value.shape[2:])
    if isinstance(module, nn.Linear):
        return float(module.in_features * value[0].numel())
    return 0.0


def worth_it(cost: VolumeCost, device: torch.device) -> bool:
    """``engine="auto"``'s rule on a volume: incremental only where the cost model predicts at least
    :data:`~occlens.engines.costmodel.MIN_SPEEDUP` over dense."""
    return cost.predicted_speedup(device.type) >= costmodel.MIN_SPEEDUP
