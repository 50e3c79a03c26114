"""Tracing a torch model with ``torch.fx``, and folding its batch norms into its convolutions.

The incremental engine plans every node of the trace, with each frozen batch norm folded into
the convolution before it (:func:`fold_batch_norms`: one op per pair instead of two; the caller's
model is not changed, the folded convolutions are copies). The models occlens builds itself are
folded once, in place, when they are loaded (:func:`fold_in_place`): on the default
EfficientNet-Lite0 that makes a dense run 10-16 % faster on 2 CPU cores (``benchmarks/cpu_batch.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn

from ..core.errors import OcclensError, first_line
from .ops import folded, hooked

AGREEMENT = 1e-3  # a traced graph's scores may differ from the model's by this, relative to their size


class Unsupported(OcclensError):
    """The model cannot run as a traced graph (it cannot be traced, or it does something the engine refuses)."""


def _tracer() -> fx.Tracer:
    leaves, functions = set(), ()
    try:
        from timm.layers import _fx as timm_fx

        leaves, functions = set(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())
    except (ImportError, AttributeError):
        pass

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return type(m) in leaves or super().is_leaf_module(m, name)

    return Tracer(autowrap_functions=functions)


def trace(model: nn.Module) -> fx.Graph:
    """The model's ``torch.fx`` graph (timm's untraceable layers kept whole); Unsupported if it cannot be
    traced, or if a module the trace inlines has a forward hook (the graph would skip it)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise Unsupported("TorchScript modules cannot be traced with torch.fx")
    try:
        graph = _tracer().trace(model)
    except Exception as err:  # fx raises many kinds: TraceError, TypeError, NotImplementedError...
        message = first_line(err)
        raise Unsupported(f"torch.fx cannot trace the model ({message})") from None
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    for name, module in model.named_modules():
        if hooked(module) and name not in called:
            raise Unsupported(f"{name or 'the model'} has a forward hook, which a traced graph would not run")
    return graph


def _pairs(graph: fx.Graph, modules: dict) -> Iterator[tuple[fx.Node, fx.Node, nn.Module, nn.Module | None]]:
    """Each convolution node feeding only a frozen batch norm node, with the folded convolution (a copy)
    and what of the batch norm remains to run after it (None, or a BatchNormAct2d's activation)."""
    for node in list(graph.nodes):
        src = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
            pair = folded(modules[src], modules[node])
            if pair is not None:
                yield src, node, *pair


def fold_batch_norms(graph: fx.Graph, modules: dict) -> dict:
    """Fold every frozen batch norm into the convolution before it, where that convolution feeds
    nothing else: one op per pair instead of two (fewer kernels, less memory traffic per step).

    ``graph`` is occlens's own trace and is changed in place (a folded plain batch norm is removed;
    a BatchNormAct2d becomes its activation); the folded convolutions are copies, so the model is
    untouched. Returns the new node -> module map.
    """
    modules = dict(modules)
    for conv, norm, fused, rest in _pairs(graph, modules):
        modules[conv] = fused
        if rest is None:
            norm.replace_all_uses_with(conv)
            graph.erase_node(norm)
            del modules[norm]
        else:
            modules[norm] = rest
    return modules


def fold_in_place(model: nn.Module) -> int:
    """Fold ``model``'s frozen batch norms into the convolutions before them, in the model itself:
    the convolution gets the folded weights, the batch norm becomes its activation or an identity.
    Returns how many were folded (none when the model cannot be traced).

    Only for models occlens builds itself, in eval mode, for inference (the default model): a caller's
    model is never changed. Pairs whose modules run more than once per forward pass stay as they are.
    """
    try:
        graph = trace(model)
    except Unsupported:
        return 0
    modules = {n: model.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"}
    calls = Counter(n.target for n in modules)
    count = 0
    for conv, norm, fused, rest in _pairs(graph, modules):
        assert isinstance(conv.target, str) and isinstance(norm.target, str)  # call_module nodes: module names
        if calls[conv.target] == calls[norm.target] == 1:
            _replace(model, conv.target, fused)
            _replace(model, norm.target, rest if rest is not None else nn.Identity())
            count += 1
    return count


def _replace(model: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def agrees(scores: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether a traced graph's ``scores`` reproduce the model's own ``reference`` scores."""
    got, want = scores.detach().double().cpu(), reference.detach().double().cpu()
    return got.shape == want.shape and float((got - want).abs().max()) <= AGREEMENT * (1 + float(want.abs().max()))
