"""The exact incremental engine: per window, recompute only the part of each layer the window changes.

The model is traced with ``torch.fx`` (the caller's module is not changed: the graph calls
its submodules as they are). One forward pass on the clean image caches every node's
output. Then, for each batch of windows, every node's value is one of

* a *region*: equal to the cached output except inside a :class:`~occlens.graph.regions.Box`,
  whose ``B x C x h x w`` values are carried;
* *dense*: the full ``B x ...`` output, as the dense engine computes it;
* *constant*: independent of the image (parameters, buffers), taken from the cache.

Sliding-window layers (convolutions -- grouped, depthwise, dilated, TF-style SAME padding --
and max/average pooling) gather each window's input context from the cached map with the
region pasted in, in one vectorised index per batch, and run the layer's own op on the
batch of contexts. Pointwise ops (batch norm in eval mode, activations, dropout in eval
mode, arithmetic with per-channel constants) run on the region values; residual adds and
channel concatenations first align their inputs to the union of their boxes. Everything
else -- global pooling, flatten/linear, attention, any op the engine does not know -- and
any region that covers most of its map is made dense (regions scattered into copies of
the cached map), so the result is always the model's own output.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelError
from ..core.grid import Grid
from ..core.scoring import model_output
from ..core.targets import Score
from ..graph.ops import (
    CAT_FUNCTIONS,
    SHAPE_ATTRIBUTES,
    SHAPE_METHODS,
    Sliding,
    aliasing,
    bound_arguments,
    in_place,
    pointwise_call,
    pointwise_module,
    sliding,
)
from ..graph.regions import Box, Through, capped, reading, through, union, window_box
from ..graph.tracing import Unsupported, agrees, fold_batch_norms, trace
from .dense import Progress
from .memory import fitting, in_batches

DENSE_FRACTION = 0.75  # a region covering more of its map than this is computed densely
MAX_BATCH = {"cpu": 64, "cuda": 256}
GROUP_SIZE = {"cpu": 16, "cuda": 128}  # windows per group of alike windows (CPU: small batches stay in cache)


# ---------------------------------------------------------------------------------------------
# the clean pass


def _attr(model: nn.Module, target: str):
    return functools.reduce(getattr, target.split("."), model)


def _call(node: fx.Node, module: nn.Module | None, args, kwargs):
    if node.op == "call_module":
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


def _clone(value):
    return fx.node.map_aggregate(value, lambda v: v.clone() if isinstance(v, torch.Tensor) else v)


def clean_pass(model: nn.Module, graph: fx.Graph, image: torch.Tensor, modules: dict) -> tuple[dict, object]:
    """Every node's output on the clean 1 x C x H x W ``image`` (copies, safe from later in-place ops); the output."""
    env: dict[fx.Node, object] = {}
    cache: dict[fx.Node, object] = {}
    first = True
    for node in graph.nodes:
        if node.op == "placeholder":
            if first:
                value, first = image.clone(), False
            elif node.args:
                value = node.args[0]
            else:
                raise Unsupported(f"the model's forward takes a second required argument {node.target!r}")
        elif node.op == "get_attr":
            value = _attr(model, node.target)
        elif node.op == "output":
            return cache, fx.node.map_arg(node.args[0], lambda n: env[n])
        else:
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            value = _call(node, modules.get(node), args, kwargs)
        env[node] = value
        cache[node] = value if node.op == "get_attr" else _clone(value)  # parameters stay shared, never copied
    raise Unsupported("the traced graph has no output")


# ---------------------------------------------------------------------------------------------
# the plan: what each node is and does, fixed before any batch runs


@dataclass(frozen=True, eq=False)
class Step:
    """One graph node: its kind ("input", "const", "shape", "sliding", "pointwise", "cat", "dense"), box and op."""

    node: fx.Node
    kind: str
    module: nn.Module | None = None
    box: Box | None = None  # the region of its output, for region kinds
    via: Through | None = None  # sliding: the context it reads
    slide: Sliding | None = None
    pads: tuple[int, int, int, int] | None = None  # sliding: F.pad of its input's clean map; None: reads the box


@dataclass(frozen=True, eq=False)
class Part:
    """The steps of one group of alike windows (see :func:`window_groups`), their boxes sized for that group."""

    windows: np.ndarray  # grid indices, raster order
    steps: tuple[Step, ...]
    input_box: Box
    offsets: dict  # id(box or context) -> 2 x windows (tops, lefts) on the device
    spans: torch.Tensor  # 4 x windows: each window's top, bottom, left, right, on the device
    kept: dict = field(default_factory=dict)  # what depends only on the geometry, made once (see memo)

    def memo(self, key: tuple, make: Callable[[], object]):
        """``make()``, computed once for this part and kept: a gather index for a batch of all its windows,
        its cost. They depend only on the geometry, so every later batch (and image) of the part reuses them."""
        if key not in self.kept:
            self.kept[key] = make()
        return self.kept[key]


@dataclass(frozen=True, eq=False)
class Plan:
    """An incremental run of one model on one image and one grid of windows."""

    model: nn.Module
    parts: tuple[Part, ...]
    output: object  # the output node's argument
    clean: dict  # node -> its clean output
    image: torch.Tensor  # H x W x C
    grid: Grid
    frees: dict  # node -> the values no step after it reads
    traced: Traced | None = None  # for planning other groups of windows
    limit: Limits | None = None
    order: tuple[np.ndarray, np.ndarray] | None = None  # rows and columns of windows by extent
    group_size: int = 1

    @property
    def device(self) -> torch.device:
        return self.image.device

    @property
    def windows(self) -> np.ndarray:
        """The windows its parts are planned for, sorted."""
        return np.sort(np.concatenate([part.windows for part in self.parts]))

    def grouped(self, windows: np.ndarray) -> Plan:
        """This plan for ``windows`` only, in groups of alike windows (each group a part, one batch or more)."""
        if self.order is None:  # approximate cap: one part for all
            parts = self.parts
        else:
            groups = window_groups(np.asarray(windows, dtype=np.int64), self.order, self.grid, self.group_size)
            parts = tuple(_part(self.traced, self.grid, g, self.limit, self.device) for g in groups)
        return replace(self, parts=parts)


def _spatially_constant(value) -> bool:
    """Whether a constant broadcasts over a 4-D map without varying across pixels."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float, bool, type(None), str, torch.dtype))
    return value.ndim <= 4 and all(s == 1 for s in value.shape[-2:])


def build(
    model: nn.Module,
    image: torch.Tensor,
    grid: Grid,
    reference: torch.Tensor | None = None,
    dense_fraction: float = DENSE_FRACTION,
    cap: float | None = None,
    group_size: int | None = None,
    windows: np.ndarray | None = None,
) -> Plan:
    """Trace ``model``, run it on the C x H x W ``image`` once, and plan every node for the windows of ``grid``
    (all, or the raster indices ``windows``: the plan can be regrouped for any others later).

    ``reference``: the model's own scores on the image; the traced graph must reproduce them.
    ``dense_fraction``: a region covering more of its map than this is computed densely.
    ``cap``: Krypton's projective-field threshold (approximate; None for exact): no region grows
    beyond this share of its map's height and width; changes outside it are dropped.
    ``group_size``: windows are planned in groups of about this many, each with boxes sized for
    its own windows (default: :data:`GROUP_SIZE` for the device).
    Raises :class:`Unsupported` when the model cannot run incrementally.

    The plan's geometry (trace, folded batch norms, every part's boxes and gather indices) depends
    only on the model and the shapes, so it is kept (see :data:`PLANS`) and the next image of the
    same shape costs one clean pass: a dataset run plans once, not per image.
    """
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        raise Unsupported("global module hooks are registered")
    limit, size, key = _planning(model, image, grid, dense_fraction, cap, group_size, windows)
    layout = _layouts.get(key)
    if layout is not None:
        _layouts.move_to_end(key)
    if isinstance(layout, Unsupported):
        raise layout
    if layout is None:
        try:
            graph = trace(model)
        except Unsupported as err:
            _keep(key, model, err)
            raise
        nodes = graph.nodes
        modules = fold_batch_norms(graph, {n: model.get_submodule(n.target) for n in nodes if n.op == "call_module"})
    else:
        graph, modules = layout.traced.graph, layout.traced.modules
    x = image[None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        clean, out = clean_pass(model, graph, x, modules)
        if reference is not None and not agrees(model_output(out, 1), reference):
            raise Unsupported("the traced graph does not reproduce the model's scores")
        if layout is None:
            layout = _layout(graph, modules, clean, grid, limit, size, image.device, windows)
            _keep(key, model, layout)
    return replace(layout, model=model, clean=clean, image=image.permute(1, 2, 0).contiguous())


def kept(
    model: nn.Module,
    image: torch.Tensor,
    grid: Grid,
    dense_fraction: float = DENSE_FRACTION,
    cap: float | None = None,
    group_size: int | None = None,
    windows: np.ndarray | None = None,
) -> Plan | None:
    """The kept plan geometry :func:`build` would use for these arguments, without running anything
    (its clean values are shape stand-ins); None when there is none yet or it could not be planned."""
    layout = _layouts.get(_planning(model, image, grid, dense_fraction, cap, group_size, windows)[2])
    return layout if isinstance(layout, Plan) else None


def _layout(graph, modules, clean, grid, limit, size, device, windows) -> Plan:
    """A plan without its image: the geometry, with the clean values' shapes only (meta tensors)."""
    shapes = {n: _shape_of(v) for n, v in clean.items()}
    output = graph.output_node().args[0] if hasattr(graph, "output_node") else list(graph.nodes)[-1].args[0]
    traced = Traced(graph, modules, shapes, frozenset(n for n in graph.nodes if in_place(n, modules.get(n))))
    whole = _part(traced, grid, np.arange(grid.size), limit, device)
    order = line_order(whole, shapes, grid) if limit.cap is None else None
    plan = Plan(None, (whole,), output, shapes, torch.empty((0, 0, 0), device=device), grid, _frees(graph, output))
    plan = replace(plan, traced=traced, limit=limit, order=order, group_size=size)
    return plan.grouped(whole.windows if windows is None else windows)


def _shape_of(value):
    """A tensor's stand-in for planning: same shape, dtype and strides, no data (parameters and non-tensors kept)."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


PLANS = 8  # plan geometries kept per process, most recently used first; dropped with their model
_layouts: OrderedDict = OrderedDict()  # key -> Plan (without an image) or the Unsupported it raised


def model_state(model: nn.Module) -> tuple | None:
    """What a plan of ``model`` depends on besides the shapes: the module itself, its forward, its training
    flags and every parameter and buffer (identity and in-place version, so a training step or
    ``load_state_dict`` makes a new plan). None where tensors keep no version (inference tensors)."""
    try:
        tensors = tuple((id(t), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
        forwards = (getattr(type(model), "forward", None), vars(model).get("forward"))
        training = tuple(m.training for m in model.modules())
    except Exception:  # inference tensors keep no version; a scripted module answers differently
        return None
    return (id(model), tuple(id(f) for f in forwards), training, tensors)


def _planning(model, image, grid, dense_fraction, cap, group_size, windows) -> tuple[Limits, int, tuple | None]:
    """The limits and group size :func:`build` plans with for these arguments, and the key its plan is kept
    under (None: not kept, see :func:`model_state`)."""
    limit = Limits(dense_fraction, cap)
    size = group_size or GROUP_SIZE["cuda" if image.device.type == "cuda" else "cpu"]
    state = model_state(model)
    if state is None:
        return limit, size, None
    chosen = None if windows is None else np.asarray(windows, dtype=np.int64).tobytes()
    return limit, size, (state, tuple(image.shape), image.dtype, image.device, grid, limit, size, chosen)


def _keep(key, model: nn.Module, layout) -> None:
    """Keep ``layout`` under ``key`` while ``model`` lives (at most :data:`PLANS`)."""
    if key is None:
        return
    if not any(k[0][0] == key[0][0] for k in _layouts):  # the first plan of this model: drop them all with it
        weakref.finalize(model, _forget, key[0][0])
    _layouts[key] = layout
    _layouts.move_to_end(key)
    while len(_layouts) > PLANS:
        _layouts.popitem(last=False)


def _forget(model_id: int) -> None:
    for k in [k for k in _layouts if k[0][0] == model_id]:
        del _layouts[k]


@dataclass(frozen=True, eq=False)
class Traced:
    """What planning needs of the traced model, the same for every group of windows."""

    graph: fx.Graph
    modules: dict  # call_module node -> module
    clean: dict  # node -> clean output
    in_place: frozenset  # nodes that change their first input in place


@dataclass(frozen=True)
class Limits:
    """When a region is made dense, and (approximate mode) the cap on its size."""

    dense_fraction: float = DENSE_FRACTION
    cap: float | None = None


def extents(part: Part, clean: dict, axis: int) -> np.ndarray:
    """Per window of ``part``, the exact length along ``axis`` (0 rows, 1 columns) of every region it changes.

    A windows x region-nodes array: the part's boxes have the largest of these; windows near an
    edge, or at another position modulo a layer's stride, change less.
    """
    spans: dict[fx.Node, tuple[np.ndarray, np.ndarray]] = {}
    for step in part.steps:
        if step.box is None:
            continue
        if step.kind == "input":
            start = step.box.tops if axis == 0 else step.box.lefts
            spans[step.node] = (start, start + (step.box.h if axis == 0 else step.box.w))
        elif step.kind == "sliding":
            begin, end = spans[step.node.args[0]]
            r = step.slide.rows if axis == 0 else step.slide.cols
            length = clean[step.node].shape[2 + axis]
            first = np.maximum(-((r.span - begin - r.pad) // r.stride), 0)
            last = np.minimum((end - 1 + r.pad) // r.stride, length - 1)
            spans[step.node] = (first, np.maximum(last + 1, first))
        else:
            ins = [spans[n] for n in step.node.all_input_nodes if n in spans]
            spans[step.node] = (np.min([b for b, _ in ins], axis=0), np.max([e for _, e in ins], axis=0))
    return np.stack([e - b for b, e in spans.values()], axis=1)


def line_order(part: Part, clean: dict, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns of windows, each sorted by how far their regions extend.

    Region sizes are separable: a window's row extents depend only on its row of windows, its
    column extents on its column. ``part``: the plan of all windows of ``grid``.
    """
    orders = []
    for axis, count in ((0, grid.rows), (1, grid.cols)):
        lines = extents(part, clean, axis)[np.arange(count) * (grid.cols if axis == 0 else 1)]
        orders.append(np.lexsort((*lines.T[::-1], lines.sum(axis=1))))  # by total extent, ties by signature
    return orders[0], orders[1]


def window_groups(windows: np.ndarray, order: tuple[np.ndarray, np.ndarray], grid: Grid, size: int) -> list:
    """``windows`` in groups of alike windows, about ``size`` each: a bin of rows times a bin of columns.

    Rows (columns) are binned in the ``order`` of their extents; groups smaller than ``size``
    are merged, smallest first, so no batch gets too small to run fast.
    """
    rows, cols = windows // grid.cols, windows % grid.cols
    bins = []
    for present, line_order, count in ((rows, order[0], grid.rows), (cols, order[1], grid.cols)):
        lines = line_order[np.isin(line_order, present)]  # the lines that have windows, by extent
        label = np.zeros(count, dtype=np.int64)
        for i, chunk in enumerate(np.array_split(lines, max(1, len(lines) // int(np.ceil(np.sqrt(size)))))):
            label[chunk] = i
        bins.append(label[present])
    key = bins[0] * (grid.rows + grid.cols) + bins[1]
    groups = sorted((windows[key == k] for k in np.unique(key)), key=len)
    while len(groups) > 1 and len(groups[0]) < size:
        groups = sorted([np.sort(np.concatenate(groups[:2])), *groups[2:]], key=len)
    return groups


def _part(traced: Traced, grid: Grid, windows: np.ndarray, limit: Limits, device) -> Part:
    """The steps for the grid's ``windows``: every node's kind and box, sized for these windows."""
    modules, clean = traced.modules, traced.clean
    (rs, re), (cs, ce) = grid.row_spans(), grid.col_spans()
    r, c = np.divmod(windows, grid.cols)
    input_box = window_box(grid.height, grid.width, rs[r], cs[c], grid.patch)
    kinds: dict[fx.Node, str] = {}
    boxes: dict[fx.Node, Box] = {}
    steps = []
    placeholder_seen = False
    for node in traced.graph.nodes:
        module = modules.get(node)
        ins = node.all_input_nodes
        if node.op == "output":
            break
        if node.op == "placeholder" and not placeholder_seen:
            placeholder_seen = True
            step = Step(node, "input", box=input_box)
        elif node.op in ("placeholder", "get_attr") or all(kinds[n] == "const" for n in ins):
            step = Step(node, "const")
        else:
            regions = [n for n in ins if kinds[n] == "region"]
            step = _region_step(node, module, regions, kinds, boxes, clean, limit)
        if node in traced.in_place and step.kind in ("sliding", "pointwise", "cat", "dense"):
            _check_exclusive(node, kinds, modules)
        kinds[node] = "region" if step.box is not None else step.kind
        if step.box is not None:
            boxes[node] = step.box
        steps.append(step)
    offsets = {}
    for key, tops, lefts in [(b, b.tops, b.lefts) for b in boxes.values()] + [
        (s.via, s.via.ctx_tops, s.via.ctx_lefts) for s in steps if s.via is not None
    ]:
        offsets[id(key)] = torch.as_tensor(np.stack([tops, lefts]), device=device)
    spans = torch.as_tensor(np.stack([rs[r], re[r], cs[c], ce[c]]), device=device)
    return Part(windows, tuple(steps), input_box, offsets, spans)


def _region_step(node: fx.Node, module, regions: list, kinds: dict, boxes: dict, clean: dict, limit: Limits) -> Step:
    """The step of a node with at least one non-constant input."""
    ins = node.all_input_nodes
    if any(kinds[n] in ("dense", "shape") for n in ins):
        return Step(node, "shape" if _shape_only(node, kinds) else "dense", module)
    if _shape_only(node, kinds):
        return Step(node, "shape", module)
    consts = [clean[n] for n in ins if kinds[n] == "const"]
    value = clean[node]
    if not (isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[0] == 1):
        return Step(node, "dense", module)
    if node.op == "call_module" and len(regions) == 1 and len(ins) == 1 and len(node.args) == 1 and not node.kwargs:
        (src,) = regions
        slide = sliding(module, clean[src].shape)
        if slide is not None:
            out_h, out_w = clean[node].shape[-2:]
            via = through(boxes[src], slide.rows, slide.cols, out_h, out_w)
            if limit.cap is not None and capped(via.out, limit.cap) is not via.out:
                via = reading(capped(via.out, limit.cap), slide.rows, slide.cols)
            if via.out.fraction > limit.dense_fraction:
                return Step(node, "dense", module)
            pads = (slide.cols.pad, slide.cols.pad_after(clean[src].shape[-1], out_w),
                    slide.rows.pad, slide.rows.pad_after(clean[src].shape[-2], out_h))  # fmt: skip
            pads = None if via.reads_only(boxes[src]) else pads
            return Step(node, "sliding", module, via.out, via, slide, pads)
        if pointwise_module(module):
            return _aligned(node, module, regions, boxes, "pointwise", limit)
        return Step(node, "dense", module)
    sizes = {tuple(clean[n].shape[-2:]) for n in regions}
    if sizes != {tuple(value.shape[-2:])} or not all(_spatially_constant(v) for v in consts):
        return Step(node, "dense", module)
    if pointwise_call(node):
        return _aligned(node, module, regions, boxes, "pointwise", limit)
    if node.op == "call_function" and node.target in CAT_FUNCTIONS and not consts:
        bound = bound_arguments(node)
        dim = bound.get("dim", 0)
        parts = bound.get("tensors", node.args[0] if node.args else ())
        if dim in (1, -3) and all(isinstance(p, fx.Node) and p in boxes for p in parts):
            return _aligned(node, module, regions, boxes, "cat", limit)
    return Step(node, "dense", module)


def _aligned(node: fx.Node, module, regions: list, boxes: dict, kind: str, limit: Limits) -> Step:
    box = union([boxes[n] for n in regions])
    box = box if limit.cap is None else capped(box, limit.cap)
    if box.fraction > limit.dense_fraction:
        return Step(node, "dense", module)
    return Step(node, kind, module, box=box)


def _shape_only(node: fx.Node, kinds: dict) -> bool:
    """Ops that only read shapes, or compute on values that came from shapes."""
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in SHAPE_ATTRIBUTES:
        return True
    ins = node.all_input_nodes
    return bool(ins) and all(kinds[n] in ("shape", "const") for n in ins)


def _check_exclusive(node: fx.Node, kinds: dict, modules: dict) -> None:
    """An in-place op may only change a tensor nothing else reads; otherwise refuse (the cache would disagree)."""
    source = node.args[0] if node.args else None
    while isinstance(source, fx.Node):
        if kinds.get(source) == "const" or len(source.users) > 1:
            raise Unsupported(f"in-place op {node.name} changes a tensor that other ops also read")
        if not aliasing(source, modules.get(source)) or not source.args:
            return
        source = source.args[0]


def _frees(graph: fx.Graph, output) -> dict:
    """node -> the values to drop after it runs: those no later node (nor the output) reads."""
    last: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        for n in node.all_input_nodes:
            last[n] = node
    keep: set = set()
    fx.node.map_arg(output, keep.add)
    frees: dict[fx.Node, tuple] = {}
    for n, at in last.items():
        if n not in keep:
            frees[at] = (*frees.get(at, ()), n)
    return frees


# ---------------------------------------------------------------------------------------------
# running a batch of windows


@dataclass(frozen=True, eq=False)
class Region:
    """A node's value for a batch: the cached map except inside ``box``, where it is ``values`` (B x C x h x w)."""

    values: torch.Tensor
    box: Box
    node: fx.Node


class Workspace:
    """Buffers reused across the batches of one run: a clean map's rows of C values, then room for a batch's region.

    Gathering from one buffer (cached rows first, the region's values after them) takes a
    single ``index_select`` per layer, which copies whole rows of C contiguous values.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, list] = {}

    def buffer(self, key: tuple, source: Callable[[], torch.Tensor], values: torch.Tensor, batch_id: int):
        """``(buffer, height, width)``: the map ``source()`` (H x W x C) as H*W rows, then ``values``' B*h*w rows."""
        tail = values.shape[0] * values.shape[1] * values.shape[2]
        entry = self._buffers.get(key)
        if entry is None:
            src = source()
            height, width, channels = src.shape
            buf = torch.empty((height * width + tail, channels), dtype=src.dtype, device=src.device)
            buf[: height * width].view(src.shape).copy_(src)
            entry = self._buffers[key] = [buf, height, width, -1]
        elif entry[0].shape[0] < entry[1] * entry[2] + tail:  # a bigger region: grow, keep the map
            old, n = entry[0], entry[1] * entry[2]
            entry[0] = torch.empty((n + 2 * tail, old.shape[1]), dtype=old.dtype, device=old.device)
            entry[0][:n] = old[:n]
            entry[3] = -1
        buf, height, width, filled = entry
        if filled != batch_id:
            buf[height * width : height * width + tail].view(values.shape).copy_(values)
            entry[3] = batch_id
        return buf, height, width


class Batch:
    """The windows of one batch (positions in a part) and their per-box offsets on the device, once per box.

    A batch of all its part's windows (the usual case: parts are sized to fit one batch) reads
    every gather index from the part's memo, so it issues only the model's own ops and one
    copy and one ``index_select`` per gather; a smaller batch (a fixed or halved batch size)
    computes its indices from the offsets.
    """

    def __init__(self, plan: Plan, part: Part, windows: np.ndarray, workspace: Workspace, batch_id: int) -> None:
        self.plan, self.part, self.size = plan, part, len(windows)
        self.workspace, self.id = workspace, batch_id
        self.whole = len(windows) == len(part.windows)  # positions are distinct: all of them, in order
        self.index = torch.as_tensor(windows, device=plan.device)
        self._offsets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._dense: dict[fx.Node, torch.Tensor] = {}

    def offsets(self, key: Box | Through | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's (tops, lefts) of a box or a sliding layer's contexts (None: the map's corner), on the device."""
        if id(key) not in self._offsets:
            if key is None:
                zeros = torch.zeros(self.size, dtype=torch.int64, device=self.plan.device)
                self._offsets[id(key)] = (zeros, zeros)
            else:
                both = self.part.offsets[id(key)].index_select(1, self.index)
                self._offsets[id(key)] = (both[0], both[1])
        return self._offsets[id(key)]

    def rows(self, key, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A gather index: the part's memo for a whole-part batch, else ``make()`` for these windows."""
        return self.part.memo(key, make) if self.whole else make()

    def gather(self, key, source, pad: tuple[int, int], region: Region, at, size: tuple[int, int]):
        """B x C x h x w contexts read from the map ``source()`` (padded by ``pad``) with the region pasted in.

        ``at``: where each context's top-left corner is (unpadded coordinates): a box, a sliding
        layer's contexts, or None for the map's corner; ``key`` names the map's buffer in the workspace.
        """
        values = region.values.permute(0, 2, 3, 1)
        n, h, w, channels = values.shape
        buf, height, width = self.workspace.buffer(key, source, values, self.id)
        index = self.rows(
            ("gather", id(region.box), id(at), pad, size, height, width),
            lambda: self._gather_index(region.box, at, pad, size, height, width),
        )
        out = buf.index_select(0, index)
        return out.view(n, size[0], size[1], channels).permute(0, 3, 1, 2)

    def _gather_index(self, box: Box, at, pad, size, height: int, width: int) -> torch.Tensor:
        """Rows of a workspace buffer (``height`` x ``width`` map rows, then the region's): per window, its context
        of ``size`` at ``at``, each position read from the region's values where the region covers it."""
        device = self.plan.device
        h, w = box.h, box.w
        tops, lefts = self.offsets(box)
        ctx = self.offsets(at)
        rows = ctx[0][:, None] + torch.arange(size[0], device=device)
        cols = ctx[1][:, None] + torch.arange(size[1], device=device)
        rr, cc = rows - tops[:, None], cols - lefts[:, None]
        inside = ((rr >= 0) & (rr < h))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]
        cached = (rows + pad[0])[:, :, None] * width + (cols + pad[1])[:, None, :]
        b = torch.arange(self.size, device=device)[:, None, None] * (h * w)
        pasted = height * width + b + rr.clamp(0, h - 1)[:, :, None] * w + cc.clamp(0, w - 1)[:, None, :]
        return torch.where(inside, pasted, cached).view(-1)

    def dense(self, region: Region) -> torch.Tensor:
        """The region scattered into B copies of the cached map (B x C x H x W, channels-last)."""
        if region.node not in self._dense:
            size = tuple(self.plan.clean[region.node].shape[-2:])
            self._dense[region.node] = self.gather(*self._map(region), (0, 0), region, None, size)
        return self._dense[region.node]

    def _map(self, region: Region):
        """The workspace key and source of a region node's clean map, H x W x C."""
        return (region.node,), lambda: self.plan.clean[region.node][0].permute(1, 2, 0)

    def align(self, region: Region, box: Box) -> torch.Tensor:
        """The region's values on ``box`` (a box holding the region's own)."""
        if region.box is box or region.box.same_as(box):
            return region.values
        return self.gather(*self._map(region), (0, 0), region, box, (box.h, box.w))


def _input(plan: Plan, batch: Batch, both: torch.Tensor, node: fx.Node) -> Region:
    """The occluded input on the part's input box; ``both``: the image's pixels (H*W rows of C), then the fill's."""
    box = batch.part.input_box
    index = batch.rows(("input",), lambda: _input_index(plan, batch, box))
    values = both.index_select(0, index).view(batch.size, box.h, box.w, -1)
    return Region(values.permute(0, 3, 1, 2), box, node)


def _input_index(plan: Plan, batch: Batch, box: Box) -> torch.Tensor:
    """Per window, the rows of ``both`` (see :func:`_input`) its input box reads: the fill inside the window."""
    tops, lefts = batch.offsets(box)
    device = plan.device
    height, width = plan.image.shape[:2]
    rows = tops[:, None] + torch.arange(box.h, device=device)
    cols = lefts[:, None] + torch.arange(box.w, device=device)
    spans = batch.part.spans.index_select(1, batch.index)
    in_rows = (rows >= spans[0, :, None]) & (rows < spans[1, :, None])
    in_cols = (cols >= spans[2, :, None]) & (cols < spans[3, :, None])
    pixel = rows[:, :, None] * width + cols[:, None, :]
    return torch.where(in_rows[:, :, None] & in_cols[:, None, :], pixel + height * width, pixel).view(-1)


def _run_step(step: Step, env: dict, batch: Batch, pixels: torch.Tensor):
    plan, node = batch.plan, step.node
    if step.kind == "const":
        return plan.clean[node]
    if step.kind == "input":
        return _input(plan, batch, pixels, node)
    if step.kind == "sliding":
        region: Region = env[node.args[0]]
        if step.pads is None:
            return Region(step.slide.op(region.values), step.box, node)
        src = plan.clean[node.args[0]]
        padded = lambda: F.pad(src, step.pads, value=step.slide.pad_value)[0].permute(1, 2, 0)  # noqa: E731
        pad, size = (step.slide.rows.pad, step.slide.cols.pad), (step.via.ctx_h, step.via.ctx_w)
        key = (node.args[0], step.pads, step.slide.pad_value)
        ctx = batch.gather(key, padded, pad, region, step.via, size)
        return Region(step.slide.op(ctx), step.box, node)
    if step.kind in ("pointwise", "cat"):

        def value(n: fx.Node):
            v = env[n]
            return batch.align(v, step.box) if isinstance(v, Region) else v

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        return Region(_call(node, step.module, args, kwargs), step.box, node)

    def value(n: fx.Node):  # dense and shape steps
        v = env[n]
        if not isinstance(v, Region):
            return v
        if step.kind == "shape":
            return torch.empty((batch.size, *plan.clean[n].shape[1:]), dtype=v.values.dtype, device="meta")
        return batch.dense(v)

    return _call(node, step.module, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value))


def run_batch(plan: Plan, part: Part, windows: np.ndarray, pixels: torch.Tensor, workspace: Workspace, batch_id: int):
    """The model's raw output on the occluded images of ``windows`` (positions in ``part``), batch first.

    ``pixels``: the image's H*W rows of C values, then the fill's (see :func:`_input`).
    """
    batch = Batch(plan, part, windows, workspace, batch_id)
    env: dict[fx.Node, object] = {}
    for step in part.steps:
        env[step.node] = _run_step(step, env, batch, pixels)
        for n in plan.frees.get(step.node, ()):
            env.pop(n, None)

    def final(n: fx.Node):
        v = env[n]
        if isinstance(v, Region):
            return batch.dense(v)
        if plan.clean.get(n) is v and isinstance(v, torch.Tensor):  # output does not depend on the image
            return v.expand(batch.size, *v.shape[1:])
        return v

    return fx.node.map_arg(plan.output, final)


def batch_size(plan: Plan, n_windows: int) -> int:
    """Windows per batch: what fits in a quarter of free memory, capped where bigger batches stop paying."""
    per_window = 0
    for step in (step for part in plan.parts for step in part.steps):
        value = plan.clean[step.node]
        if step.kind in ("const", "shape") or not isinstance(value, torch.Tensor):
            continue
        elements = value[0].numel() if step.box is None else value.shape[1] * step.box.h * step.box.w
        if step.via is not None:
            elements += value.shape[1] * step.via.ctx_h * step.via.ctx_w
        per_window = max(per_window, elements * value.element_size())
    return fitting(n_windows, 8 * per_window, plan.device, MAX_BATCH["cuda" if plan.device.type == "cuda" else "cpu"])


def mean_batch(plan: Plan, size: int) -> float:
    """Windows per batch, on average, when every part runs in batches of at most ``size``."""
    batches = sum(-(-len(part.windows) // size) for part in plan.parts)
    return sum(len(part.windows) for part in plan.parts) / max(batches, 1)


@dataclass(frozen=True, eq=False)
class Incremental:
    """The incremental engine: a traced plan recomputes only what each window changes, exactly."""

    plan: Plan
    batch_size: int
    name: str = "incremental"

    def occluded_scores(
        self,
        image: torch.Tensor,
        fill_image: torch.Tensor,
        score: Score,
        progress: Progress | None = None,
        windows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """``score`` of each occluded copy (all windows, or ``windows``), T x windows float64, and the batch
        size used: the counterpart of :meth:`occlens.engines.dense.Dense.occluded_scores`, same shapes, same
        batching and CUDA out-of-memory back-off. ``image`` is the plan's own (it is what was planned for);
        ``fill_image`` is C x H x W on the model's device and dtype."""
        plan, batch_size = self.plan, self.batch_size
        windows = np.arange(plan.grid.size) if windows is None else np.asarray(windows, dtype=np.int64)
        if not np.array_equal(plan.windows, np.sort(windows)):
            plan = plan.grouped(windows)  # groups of these windows: batches of alike windows, not too small
        n = len(windows)
        out: list[np.ndarray | None] = [None]
        pixels = plan.image.shape[0] * plan.image.shape[1]
        both = torch.cat([plan.image.reshape(pixels, -1), fill_image.permute(1, 2, 0).reshape(pixels, -1)])
        workspace, done = Workspace(), []  # done: the number of windows of each batch so far
        position = np.full(plan.grid.size, -1)
        for part in plan.parts:
            position[part.windows] = np.arange(len(part.windows))
            mine = np.flatnonzero(np.isin(windows, part.windows))  # where in the output

            def step(start: int, stop: int, part=part, mine=mine) -> None:
                todo = mine[start:stop]
                with torch.inference_mode():
                    raw = run_batch(plan, part, position[windows[todo]], both, workspace, len(done))
                try:
                    got = np.asarray(score(model_output(raw, len(todo)), len(todo)), dtype=np.float64).T
                except ModelError as err:
                    first, last = windows[todo[0]], windows[todo[-1]]
                    raise ModelError(f"on the occluded images of windows {first}..{last}: {err}") from None
                if out[0] is None:
                    out[0] = np.empty((got.shape[0], n), dtype=np.float64)
                out[0][:, todo] = got
                done.append(len(todo))
                if progress is not None:
                    progress(sum(done), n)

            batch_size = in_batches(len(mine), batch_size, plan.device, "window", step)
        return (np.empty((0, n)) if out[0] is None else out[0]), batch_size
