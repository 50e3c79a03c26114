"""The ops the incremental engine knows: what each does to a changed region.

* *sliding-window* layers (convolutions -- grouped, depthwise, dilated, TF-style SAME padding
  -- and max/average pooling) grow a region by their reach;
* *pointwise* ops (batch norm in eval mode, activations, dropout in eval mode, arithmetic with
  per-channel constants) keep it;
* everything else is unknown to the engine, which then computes densely.

Only a module whose ``forward`` is one of these classes' own (not overridden) and that has no
hooks counts; in-place ops are recognised so the engine can refuse the unsafe ones.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .regions import Reach


@dataclass(frozen=True)
class Sliding:
    """A sliding-window layer: its reach along rows and columns, its padding value, and its op without padding."""

    rows: Reach
    cols: Reach
    pad_value: float
    op: Callable[[torch.Tensor], torch.Tensor]


def _owner(module: nn.Module) -> type:
    """The class whose ``forward`` the module runs."""
    return next(c for c in type(module).__mro__ if "forward" in c.__dict__)


def hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _same_pad(length: int, kernel: int, stride: int, dilation: int) -> int:
    """Padding before the first input of TF-style SAME padding (timm's ``pad_same``)."""
    return max((math.ceil(length / stride) - 1) * stride + (kernel - 1) * dilation + 1 - length, 0) // 2


TIMM_LAYERS = {
    "Conv2dSame": "timm.layers.conv2d_same",
    "MaxPool2dSame": "timm.layers.pool2d_same",
    "AvgPool2dSame": "timm.layers.pool2d_same",
    "BatchNormAct2d": "timm.layers.norm_act",
}


@functools.cache
def _timm(name: str) -> type | None:
    """timm's layer class ``name``, or None when timm (or the layer) is not there."""
    try:
        return cast(type, getattr(importlib.import_module(TIMM_LAYERS[name]), name))
    except (ImportError, AttributeError):
        return None


def sliding(module: nn.Module, in_shape: torch.Size) -> Sliding | None:
    """How ``module`` slides over a 4-D input of ``in_shape``, or None if it is not a known sliding-window layer."""
    if hooked(module) or len(in_shape) != 4:
        return None
    owner, (height, width) = _owner(module), in_shape[-2:]
    pair = nn.modules.utils._pair
    if owner in (nn.Conv2d, _timm("Conv2dSame")) and module.padding_mode == "zeros":
        m = cast(nn.Conv2d, module)  # its forward is Conv2d's: a Conv2d (timm's Conv2dSame subclasses it)
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        if owner is nn.Conv2d:
            left, _, top, _ = m._reversed_padding_repeated_twice
        else:
            top, left = _same_pad(height, kh, sh, dh), _same_pad(width, kw, sw, dw)
        op = functools.partial(_conv, m)
        return Sliding(Reach(kh, sh, dh, top), Reach(kw, sw, dw, left), 0.0, op)
    if owner in (nn.MaxPool2d, _timm("MaxPool2dSame")) and not module.return_indices:
        (kh, kw), (dh, dw) = pair(module.kernel_size), pair(module.dilation)
        sh, sw = pair(module.stride or module.kernel_size)
        if owner is nn.MaxPool2d:
            top, left = pair(module.padding)
        else:
            top, left = _same_pad(height, kh, sh, dh), _same_pad(width, kw, sw, dw)
        op = functools.partial(F.max_pool2d, kernel_size=(kh, kw), stride=(sh, sw), dilation=(dh, dw))
        return Sliding(Reach(kh, sh, dh, top), Reach(kw, sw, dw, left), -math.inf, op)
    if owner in (nn.AvgPool2d, _timm("AvgPool2dSame")) and not module.ceil_mode:
        (kh, kw), (sh, sw) = pair(module.kernel_size), pair(module.stride or module.kernel_size)
        if owner is nn.AvgPool2d:
            if not module.count_include_pad or module.divisor_override is not None:
                return None
            top, left = pair(module.padding)
        else:
            top, left = _same_pad(height, kh, sh, 1), _same_pad(width, kw, sw, 1)
        op = functools.partial(F.avg_pool2d, kernel_size=(kh, kw), stride=(sh, sw))
        return Sliding(Reach(kh, sh, 1, top), Reach(kw, sw, 1, left), 0.0, op)
    return None


def folded(conv: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module | None] | None:
    """``conv`` followed by the frozen batch norm ``bn`` as one convolution (a copy; neither module is
    changed) and what of ``bn`` remains to run after it (a BatchNormAct2d's activation), or None
    when the pair cannot be folded. A ``Conv3d`` folds with a ``BatchNorm3d`` the same way."""
    owner = _owner(conv)
    if owner not in (nn.Conv2d, _timm("Conv2dSame"), nn.Conv3d) or hooked(conv) or conv.padding_mode != "zeros":
        return None
    conv = cast(nn.Conv2d, conv)  # its forward is Conv2d's or Conv3d's (timm's Conv2dSame subclasses Conv2d)
    norm = nn.BatchNorm3d if owner is nn.Conv3d else nn.BatchNorm2d
    if not isinstance(bn, norm) or not pointwise_module(bn) or bn.num_features != conv.out_channels:
        return None
    assert bn.running_mean is not None and bn.running_var is not None  # pointwise_module: frozen statistics
    if not (conv.weight.is_floating_point() and bn.running_var.is_floating_point()):
        return None
    with torch.no_grad():
        scale = (bn.running_var.double() + bn.eps).rsqrt()
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            assert bn.weight is not None and bn.bias is not None  # affine: the batch norm has both
            scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        bias = bias * scale + shift
    fused = copy.copy(conv)  # shares everything but the parameters, which are new
    fused._parameters = {
        "weight": nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False),
        "bias": nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False),
    }
    rest = None
    if _owner(bn) is _timm("BatchNormAct2d"):
        act = cast(nn.Module, bn.act)  # timm's BatchNormAct2d: its activation, a module
        rest = act if _owner(act) is not nn.Identity else None
    return fused, rest


def _conv(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)


@dataclass(frozen=True)
class SlidingVolume:
    """A 3-D sliding-window layer: its reach along depth, rows and columns, its padding value, its op without
    padding."""

    reaches: tuple[Reach, Reach, Reach]
    pad_value: float
    op: Callable[[torch.Tensor], torch.Tensor]


def sliding_volume(module: nn.Module) -> SlidingVolume | None:
    """How ``module`` slides over a 5-D input (``Conv3d`` with zero padding, ``MaxPool3d``, ``AvgPool3d`` counting
    its padding), or None if it is not one of these."""
    if hooked(module):
        return None
    owner, triple = _owner(module), nn.modules.utils._triple
    if owner is nn.Conv3d and module.padding_mode == "zeros":
        m = cast(nn.Conv3d, module)
        pads = m._reversed_padding_repeated_twice[4::-2]  # (depth, rows, columns): the padding before each
        op = functools.partial(_conv3d, m)
        return SlidingVolume(_reaches(m.kernel_size, m.stride, m.dilation, pads), 0.0, op)
    if owner is nn.MaxPool3d and not module.return_indices:
        k, s, d = triple(module.kernel_size), triple(module.stride or module.kernel_size), triple(module.dilation)
        op = functools.partial(F.max_pool3d, kernel_size=k, stride=s, dilation=d)  # ceil mode: padded contexts
        return SlidingVolume(_reaches(k, s, d, triple(module.padding)), -math.inf, op)
    if owner is nn.AvgPool3d and not module.ceil_mode and module.count_include_pad:
        if module.divisor_override is not None:
            return None
        k, s = triple(module.kernel_size), triple(module.stride or module.kernel_size)
        op = functools.partial(F.avg_pool3d, kernel_size=k, stride=s)
        return SlidingVolume(_reaches(k, s, (1, 1, 1), triple(module.padding)), 0.0, op)
    return None


def _reaches(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
             pad: Sequence[int]) -> tuple[Reach, Reach, Reach]:  # fmt: skip
    return cast(tuple[Reach, Reach, Reach], tuple(Reach(*a) for a in zip(kernel, stride, dilation, pad, strict=True)))


def _conv3d(m: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return F.conv3d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)


ACTIVATIONS = (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
               nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Hardshrink, nn.Softshrink)  # fmt: skip
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def pointwise_module(module: nn.Module) -> bool:
    """Whether ``module`` maps each pixel's channel vector on its own (so a region stays a region)."""
    if hooked(module):
        return False
    owner = _owner(module)
    if owner in ACTIVATIONS:
        return True
    if owner in DROPOUTS:
        return not module.training
    bn_act = _timm("BatchNormAct2d")
    if owner in (nn.modules.batchnorm._BatchNorm, bn_act) and isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        frozen = not module.training and module.running_mean is not None and module.running_var is not None
        if not frozen or owner is not bn_act:
            return frozen
        return pointwise_module(cast(nn.Module, module.drop)) and pointwise_module(cast(nn.Module, module.act))
    return False


POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.relu, torch.relu_,
    torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.maximum, torch.minimum,
    F.relu, F.relu_, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu,
    F.elu, F.selu, F.mish, F.hardtanh, F.softplus,
}  # fmt: skip
POINTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "abs", "exp", "pow", "relu", "sigmoid", "tanh", "clamp", "clip",
    "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "tanh_", "clamp_", "clip_", "hardtanh_",
}  # fmt: skip
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
SHAPE_METHODS = {"size", "dim"}
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype"}  # not "device": regions stand in as meta tensors
ALIASING_METHODS = {
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "expand", "contiguous", "narrow",
    "select", "detach", "to", "type", "float", "view_as", "__getitem__",
}  # fmt: skip


def bound_arguments(node: fx.Node) -> dict[str, Any]:
    """The call's arguments by name, where the target's signature can be read."""
    if isinstance(node.target, str):  # a method's or a module's name: no signature
        return dict(node.kwargs)
    try:
        return inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):
        return dict(node.kwargs)


def pointwise_call(node: fx.Node) -> bool:
    if node.op == "call_method":
        if node.target == "flip":
            dims = cast(Sequence[Any], node.kwargs.get("dims", node.args[1:]))  # x.flip(dims) or x.flip(*dims)
            dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
            return all(d in (1, -3) for d in dims)
        return node.target in POINTWISE_METHODS
    if node.op != "call_function":
        return False
    if node.target is F.batch_norm:
        return bound_arguments(node).get("training", False) is False
    if node.target is F.dropout:
        return bound_arguments(node).get("training", True) is False
    if node.target is torch.flip:
        return all(d in (1, -3) for d in bound_arguments(node).get("dims", (0,)))
    return node.target in POINTWISE_FUNCTIONS


def in_place(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        if module is None or not getattr(module, "inplace", False):
            return False
        return _owner(module) in ACTIVATIONS + DROPOUTS
    name = cast(str, node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name.endswith("_") and not name.startswith("__"):
        return True
    if node.op == "call_function" and node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    return node.op == "call_function" and bound_arguments(node).get("inplace", False) is True


def aliasing(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node's output may share memory with its first input."""
    if node.op == "call_module":
        assert module is not None  # a call_module node's module
        return _owner(module) in (nn.Identity, *DROPOUTS) or in_place(node, module)
    if node.op == "call_method":
        return node.target in ALIASING_METHODS or in_place(node, module)
    return node.op == "call_function" and (in_place(node, module) or node.target in (torch.flatten, torch.reshape))
