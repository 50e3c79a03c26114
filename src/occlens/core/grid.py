"""Window geometry: where each occluding block sits. Pure numpy, no torch.

Window ``(r, c)`` covers rows ``[r*sh, min(r*sh + ph, H))`` and columns
``[c*sw, min(c*sw + pw, W))``; there are ``R = ceil((H - ph) / sh) + 1`` rows
and ``C = ceil((W - pw) / sw) + 1`` columns of windows, the last ones clipped to
the image so that every pixel is covered. Window ``i = r*C + c``: raster
order, top-left first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, shown


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``16`` -> ``(16, 16)``; ``(h, w)`` stays; anything else is a ConfigError."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    expected = "an int or a pair of ints (height, width)"
    raise ConfigError(f"{name} must be {expected}, got {shown(value)}", option=name if name.isidentifier() else None,
                      value=value, expected=expected)  # fmt: skip


def check_windows(patch: tuple[int, int], stride: tuple[int, int]) -> None:
    """The rules of window geometry that hold whatever the image size: sizes of at least one pixel, and
    a stride of at most the patch (a larger one would leave pixels never occluded)."""
    (ph, pw), (sh, sw) = patch, stride
    if ph < 1 or pw < 1:
        raise ConfigError(f"patch must be at least 1 pixel, got {ph}x{pw}")
    if sh < 1 or sw < 1:
        raise ConfigError(f"stride must be at least 1 pixel, got {sh}x{sw}")
    if sh > ph or sw > pw:
        raise ConfigError(
            f"stride {sh}x{sw} is larger than patch {ph}x{pw}, which would leave pixels "
            f"never occluded; use a stride of at most the patch size"
        )


def _spans(size: int, patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    count = math.ceil((size - patch) / stride) + 1
    starts = np.arange(count, dtype=np.int64) * stride
    return starts, np.minimum(starts + patch, size)


@dataclass(frozen=True)
class Grid:
    """The windows of one explanation: image size, window size and stride, each (height, width)."""

    height: int
    width: int
    patch: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        ph, pw = self.patch
        sh, sw = self.stride
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"image size must be at least 1x1, got {self.height}x{self.width}")
        check_windows(self.patch, self.stride)
        if ph > self.height or pw > self.width:
            raise ConfigError(
                f"patch {ph}x{pw} is larger than the {self.height}x{self.width} image; "
                f"use a patch of at most {self.height}x{self.width}"
            )

    @classmethod
    def build(cls, height: int, width: int, patch, stride=None) -> Grid:
        """A grid from user-style arguments: ints or pairs; ``stride=None`` means ``stride = patch``."""
        p = pair(patch, "patch")
        s = p if stride is None else pair(stride, "stride")
        return cls(int(height), int(width), p, s)

    @property
    def rows(self) -> int:
        """R, the number of window rows."""
        return math.ceil((self.height - self.patch[0]) / self.stride[0]) + 1

    @property
    def cols(self) -> int:
        """C, the number of window columns."""
        return math.ceil((self.width - self.patch[1]) / self.stride[1]) + 1

    @property
    def size(self) -> int:
        """R*C, the number of windows (and of occluded forward passes)."""
        return self.rows * self.cols

    def row_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the R window rows, ends exclusive and clipped to the image."""
        return _spans(self.height, self.patch[0], self.stride[0])

    def col_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the C window columns, ends exclusive and clipped to the image."""
        return _spans(self.width, self.patch[1], self.stride[1])

    def window(self, i: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of window ``i`` (raster order), bottom/right exclusive."""
        if not 0 <= i < self.size:
            raise IndexError(f"window {i} out of range 0..{self.size - 1}")
        r, c = divmod(i, self.cols)
        (rs, re), (cs, ce) = self.row_spans(), self.col_spans()
        return int(rs[r]), int(re[r]), int(cs[c]), int(ce[c])

    def windows(self) -> np.ndarray:
        """All windows as an ``(R*C, 4)`` array of ``(top, bottom, left, right)``, raster order."""
        (rs, re), (cs, ce) = self.row_spans(), self.col_spans()
        r, c = np.divmod(np.arange(self.size), self.cols)
        return np.stack([rs[r], re[r], cs[c], ce[c]], axis=1)

    def _indicators(self) -> tuple[np.ndarray, np.ndarray]:
        (rs, re), (cs, ce) = self.row_spans(), self.col_spans()
        h, w = np.arange(self.height), np.arange(self.width)
        a_rows = (h >= rs[:, None]) & (h < re[:, None])  # R x H
        a_cols = (w >= cs[:, None]) & (w < ce[:, None])  # C x W
        return a_rows.astype(np.float64), a_cols.astype(np.float64)

    def coverage(self) -> np.ndarray:
        """H x W count of the windows covering each pixel (at least 1 everywhere)."""
        a_rows, a_cols = self._indicators()
        return np.outer(a_rows.sum(0), a_cols.sum(0)).astype(np.int64)

    def pixel_map(self, values: np.ndarray) -> np.ndarray:
        """H x W mean of the per-window ``values`` (R x C) over the windows covering each pixel.

        Windows are products of a row span and a column span, so the sum over covering
        windows is ``A_rows.T @ values @ A_cols`` and the count is an outer product.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.rows, self.cols):
            raise ValueError(f"expected values of shape {(self.rows, self.cols)}, got {values.shape}")
        a_rows, a_cols = self._indicators()
        total = a_rows.T @ values @ a_cols
        return total / np.outer(a_rows.sum(0), a_cols.sum(0))
