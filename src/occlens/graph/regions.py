"""Changed regions: where an occluding window changes each layer's output. Pure numpy, no torch.

A :class:`Box` holds, for every window of a grid, the rectangle of one feature map that
may differ from the clean image's map: rows ``[tops[i], tops[i] + h)`` and columns
``[lefts[i], lefts[i] + w)``. The size ``h x w`` is the same for every window (the
largest any window needs), so a batch of windows is one tensor; boxes near an edge are
shifted inwards to stay inside the map, which only makes them cover more.

A sliding-window layer (convolution, pooling) along one axis is a :class:`Reach`:
output ``o`` reads inputs ``o*stride - pad + j*dilation`` for ``j < kernel``. An input box
``[t, t+h)`` changes outputs ``ceil((t + pad - span) / stride) .. floor((t + h - 1 + pad) / stride)``
with ``span = (kernel - 1) * dilation``; computing them needs the *context*
``[o0*stride - pad, o0*stride - pad + (ho-1)*stride + span]`` of the input.

A :class:`Block` is the same on any number of axes (a volume's depth, rows and columns): a common size per axis
and each window's start; :func:`spread` and :func:`joined` are :func:`through` and :func:`union` axis by axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Box:
    """Per-window rectangles of one common size ``h x w`` on a ``height x width`` map."""

    height: int
    width: int
    h: int
    w: int
    tops: np.ndarray  # (windows,) int64
    lefts: np.ndarray  # (windows,) int64

    @property
    def fraction(self) -> float:
        """The share of the map one box covers."""
        return self.h * self.w / (self.height * self.width)

    def same_as(self, other: Box) -> bool:
        return (
            (self.height, self.width, self.h, self.w) == (other.height, other.width, other.h, other.w)
            and np.array_equal(self.tops, other.tops)
            and np.array_equal(self.lefts, other.lefts)
        )


@dataclass(frozen=True)
class Reach:
    """A sliding-window layer along one axis: kernel, stride, dilation and the padding before the first input."""

    kernel: int
    stride: int
    dilation: int = 1
    pad: int = 0

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation

    def pad_after(self, length: int, out_length: int) -> int:
        """Padding after the last input that the ``out_length`` outputs read (ceil-mode and SAME included)."""
        return max(0, (out_length - 1) * self.stride + self.span + 1 - length - self.pad)


@dataclass(frozen=True, eq=False)
class Through:
    """What a sliding-window layer does to a box: the output box and the input context it reads."""

    out: Box
    ctx_tops: np.ndarray  # in input coordinates, may be negative (padding)
    ctx_lefts: np.ndarray
    ctx_h: int
    ctx_w: int

    def reads_only(self, box: Box) -> bool:
        """Whether the context is exactly the input box (1x1 stride-1 layers): no gather needed."""
        return (
            (self.ctx_h, self.ctx_w) == (box.h, box.w)
            and np.array_equal(self.ctx_tops, box.tops)
            and np.array_equal(self.ctx_lefts, box.lefts)
        )


def window_box(height: int, width: int, tops: np.ndarray, lefts: np.ndarray, patch: tuple[int, int]) -> Box:
    """The input box of windows starting at ``tops``/``lefts`` (clipped windows shifted inwards)."""
    ph, pw = patch
    return Box(height, width, ph, pw, np.minimum(tops, height - ph), np.minimum(lefts, width - pw))


def _axis(starts: np.ndarray, size: int, length: int, out_length: int, r: Reach):
    first = np.maximum(-((r.span - starts - r.pad) // r.stride), 0)  # ceil((start + pad - span) / stride)
    last = np.minimum((starts + size - 1 + r.pad) // r.stride, out_length - 1)
    out_size = int(max(1, (last - first + 1).max()))  # the most outputs any window changes
    first = np.clip(first, 0, out_length - out_size)
    return first, out_size, first * r.stride - r.pad, (out_size - 1) * r.stride + r.span + 1


def through(box: Box, rows: Reach, cols: Reach, out_height: int, out_width: int) -> Through:
    """The box a sliding-window layer's output changes in, and the context it reads, for input ``box``."""
    top, oh, ctx_top, ctx_h = _axis(box.tops, box.h, box.height, out_height, rows)
    left, ow, ctx_left, ctx_w = _axis(box.lefts, box.w, box.width, out_width, cols)
    return Through(Box(out_height, out_width, oh, ow, top, left), ctx_top, ctx_left, ctx_h, ctx_w)


def reading(out: Box, rows: Reach, cols: Reach) -> Through:
    """The context a sliding-window layer reads to compute the output box ``out``."""
    ctx_h = (out.h - 1) * rows.stride + rows.span + 1
    ctx_w = (out.w - 1) * cols.stride + cols.span + 1
    return Through(out, out.tops * rows.stride - rows.pad, out.lefts * cols.stride - cols.pad, ctx_h, ctx_w)


def capped(box: Box, cap: float) -> Box:
    """``box`` shrunk to at most ``cap`` of the map's height and width, around each box's centre.

    Krypton's projective-field threshold: changes outside the capped box are dropped
    (the cached values stand in), which makes the result approximate.
    """
    h, w = min(box.h, max(1, math.ceil(cap * box.height))), min(box.w, max(1, math.ceil(cap * box.width)))
    if (h, w) == (box.h, box.w):
        return box
    tops = np.clip(box.tops + (box.h - h) // 2, 0, box.height - h)
    lefts = np.clip(box.lefts + (box.w - w) // 2, 0, box.width - w)
    return Box(box.height, box.width, h, w, tops, lefts)


def union(boxes: list[Box]) -> Box:
    """The smallest common-size box holding every box of ``boxes`` (all on the same map), per window."""
    first = boxes[0]
    if all(b.same_as(first) for b in boxes[1:]):
        return first
    tops = np.min([b.tops for b in boxes], axis=0)
    lefts = np.min([b.lefts for b in boxes], axis=0)
    h = int(np.max(np.max([b.tops + b.h for b in boxes], axis=0) - tops))
    w = int(np.max(np.max([b.lefts + b.w for b in boxes], axis=0) - lefts))
    return Box(first.height, first.width, h, w, np.minimum(tops, first.height - h), np.minimum(lefts, first.width - w))


@dataclass(frozen=True, eq=False)
class Block:
    """:class:`Box` on any number of spatial axes (a volume's depth, rows, columns): per window, the block of one
    common size ``extent`` on a map of ``sizes`` that may differ from the clean map, starting at ``starts[i]``."""

    sizes: tuple[int, ...]
    extent: tuple[int, ...]
    starts: np.ndarray  # (windows, axes) int64

    @property
    def fraction(self) -> float:
        """The share of the map one block covers."""
        return math.prod(self.extent) / math.prod(self.sizes)

    def same_as(self, other: Block) -> bool:
        return (self.sizes, self.extent) == (other.sizes, other.extent) and np.array_equal(self.starts, other.starts)


def window_block(sizes: tuple[int, ...], starts: np.ndarray, patch: tuple[int, ...]) -> Block:
    """The input block of windows starting at ``starts`` (windows x axes; clipped windows shifted inwards)."""
    return Block(tuple(sizes), tuple(patch), np.minimum(starts, np.asarray(sizes) - np.asarray(patch)))


def spread(block: Block, reaches: tuple[Reach, ...], out_sizes: tuple[int, ...]) -> tuple[Block, np.ndarray, tuple]:
    """What a sliding-window layer does to ``block``, axis by axis as :func:`through`: the output block, and the
    context it reads (its starts in input coordinates, negative in the padding, and its common size)."""
    axes = [_axis(block.starts[:, a], block.extent[a], block.sizes[a], out_sizes[a], r) for a, r in enumerate(reaches)]
    out = Block(tuple(out_sizes), tuple(a[1] for a in axes), np.stack([a[0] for a in axes], axis=1))
    return out, np.stack([a[2] for a in axes], axis=1), tuple(int(a[3]) for a in axes)


def joined(blocks: list[Block]) -> Block:
    """The smallest common-size block holding every block of ``blocks`` (all on the same map), per window."""
    first = blocks[0]
    if all(b.same_as(first) for b in blocks[1:]):
        return first
    starts = np.min([b.starts for b in blocks], axis=0)
    ends = np.max([b.starts + np.asarray(b.extent) for b in blocks], axis=0)
    extent = tuple(int(e) for e in (ends - starts).max(axis=0))
    return Block(first.sizes, extent, np.minimum(starts, np.asarray(first.sizes) - np.asarray(extent)))
