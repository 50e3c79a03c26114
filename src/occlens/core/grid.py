"""Window geometry: where each occluding block sits. Pure numpy, no torch.

Window ``(r, c)`` covers rows ``[r*sh, min(r*sh + ph, H))`` and columns
``[c*sw, min(c*sw + pw, W))``; there are ``R = ceil((H - ph) / sh) + 1`` rows
and ``C = ceil((W - pw) / sw) + 1`` columns of windows, the last ones clipped to
the image so that every pixel is covered. Window ``i = r*C + c``: raster
order, top-left first.

A volume (D x H x W voxels, :class:`VolumeGrid`) follows the same rule on each of its three axes: window
``(p, r, c)`` covers planes ``[p*sd, min(p*sd + pd, D))`` and the rows and columns above; ``Dw = ceil((D -
pd) / sd) + 1`` planes of windows; window ``i = (p*R + r)*C + c``: depth, then rows, then columns. Every window
is a product of one span per axis, so the per-pixel (per-voxel) map is a contraction with one small indicator
matrix per axis (:func:`window_mean`), never a loop over windows or an array of windows x voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import BANDS
from .errors import ConfigError, shown


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _ints(value, n: int, name: str, expected: str) -> tuple[int, ...]:
    """``16`` -> ``(16,) * n``; a tuple or list of ``n`` ints stays; anything else is a ConfigError."""
    if _is_int(value):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(_is_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise ConfigError(f"{name} must be {expected}, got {shown(value)}", option=name if name.isidentifier() else None,
                      value=value, expected=expected)  # fmt: skip


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``16`` -> ``(16, 16)``; ``(h, w)`` stays; anything else is a ConfigError."""
    return _ints(value, 2, name, "an int or a pair of ints (height, width)")  # type: ignore[return-value]


def triple(value: int | tuple[int, int, int] | list[int], name: str) -> tuple[int, int, int]:
    """``8`` -> ``(8, 8, 8)``; ``(d, h, w)`` stays; anything else (a pair too) is a ConfigError."""
    return _ints(value, 3, name, "an int or three ints (depth, height, width)")  # type: ignore[return-value]


def check_windows(patch: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """The rules of window geometry that hold whatever the image size: sizes of at least one pixel, and
    a stride of at most the patch (a larger one would leave pixels never occluded). Any number of axes."""
    x = lambda sizes: "x".join(str(v) for v in sizes)  # noqa: E731
    if len(patch) != len(stride):
        raise ConfigError(f"patch {x(patch)} and stride {x(stride)} have different numbers of axes; give both "
                          f"{len(patch)} values")  # fmt: skip
    if min(patch) < 1:
        raise ConfigError(f"patch must be at least 1 pixel, got {x(patch)}")
    if min(stride) < 1:
        raise ConfigError(f"stride must be at least 1 pixel, got {x(stride)}")
    if any(s > p for s, p in zip(stride, patch, strict=True)):
        raise ConfigError(
            f"stride {x(stride)} is larger than patch {x(patch)}, which would leave pixels "
            f"never occluded; use a stride of at most the patch size"
        )


def _spans(size: int, patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    count = math.ceil((size - patch) / stride) + 1
    starts = np.arange(count, dtype=np.int64) * stride
    return starts, np.minimum(starts + patch, size)


def _indicator(size: int, patch: int, stride: int) -> np.ndarray:
    """The windows x pixels 0/1 matrix of one axis: which of the ``size`` positions each window span covers."""
    starts, ends = _spans(size, patch, stride)
    at = np.arange(size)
    return ((at >= starts[:, None]) & (at < ends[:, None])).astype(np.float64)


def window_mean(values: np.ndarray, indicators: list[np.ndarray], dtype=np.float64) -> np.ndarray:
    """The per-pixel mean of per-window ``values`` over the windows covering each pixel, for windows that are
    products of one span per axis: ``values`` has one axis per image axis (windows along it), ``indicators``
    one windows x pixels 0/1 matrix per axis (:func:`_indicator`).

    The sum over covering windows is ``values`` contracted with each indicator in turn (each intermediate no
    larger than the result) and the count a product of per-axis counts, divided out one axis at a time, so a
    512 x 512 x 300 voxel map costs the map itself and no windows x voxels array. ``dtype``: of the result
    (float32 halves a large volume's map).
    """
    total = np.asarray(values, dtype=dtype)
    for a in indicators:  # contracting the first axis puts the pixel axis last: after all, they are in order
        total = np.tensordot(total, a.astype(dtype, copy=False), axes=([0], [0]))
    for axis, a in enumerate(indicators):
        shape = [1] * total.ndim
        shape[axis] = -1
        total /= a.sum(0).astype(dtype).reshape(shape)
    return total


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

    @property
    def shape(self) -> tuple[int, int]:
        """(R, C): the shape of the window grid (of ``delta``), for code that serves images and volumes alike."""
        return self.rows, self.cols

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W): the shape of the pixel map."""
        return self.height, self.width

    def spans(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(starts, ends) of the windows along each axis: rows, then columns."""
        return self.row_spans(), self.col_spans()

    def _indicators(self) -> list[np.ndarray]:
        return [_indicator(self.height, self.patch[0], self.stride[0]),  # R x H
                _indicator(self.width, self.patch[1], self.stride[1])]  # C x W  # fmt: skip

    def coverage(self) -> np.ndarray:
        """H x W count of the windows covering each pixel (at least 1 everywhere)."""
        return _coverage(self._indicators())

    def pixel_map(self, values: np.ndarray) -> np.ndarray:
        """H x W mean of the per-window ``values`` (R x C) over the windows covering each pixel.

        Windows are products of a row span and a column span, so the sum over covering
        windows is ``A_rows.T @ values @ A_cols`` and the count is an outer product (:func:`window_mean`).
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.rows, self.cols):
            raise ValueError(f"expected values of shape {(self.rows, self.cols)}, got {values.shape}")
        return window_mean(values, self._indicators())

    def to_json(self) -> dict:
        """The grid as a result's JSON writes it (``grid_from_json`` reads it back)."""
        return {"height": self.height, "width": self.width, "rows": self.rows, "cols": self.cols,
                "patch": list(self.patch), "stride": list(self.stride)}  # fmt: skip


def _coverage(indicators: list[np.ndarray]) -> np.ndarray:
    """The count of covering windows per pixel: the outer product of the per-axis counts."""
    count = np.ones((), dtype=np.int64)
    for a in indicators:
        count = np.multiply.outer(count, a.sum(0).astype(np.int64))
    return count


@dataclass(frozen=True)
class VolumeGrid:
    """The windows of a volume: its size (depth, height, width) in voxels, window size and stride, each
    ``(d, h, w)``. The 2-D rules of :class:`Grid` on three axes: ``Dw x R x C`` windows, raster order depth, then
    rows, then columns (window ``i = (p*R + r)*C + c``), the last window of each axis clipped to the volume."""

    depth: int
    height: int
    width: int
    patch: tuple[int, int, int]
    stride: tuple[int, int, int]

    def __post_init__(self) -> None:
        size = self.image_shape
        if min(size) < 1:
            raise ConfigError(f"volume size must be at least 1x1x1, got {'x'.join(map(str, size))}")
        check_windows(self.patch, self.stride)
        if any(p > n for p, n in zip(self.patch, size, strict=True)):
            got, most = "x".join(map(str, self.patch)), "x".join(map(str, size))
            raise ConfigError(f"patch {got} is larger than the {most} volume; use a patch of at most {most}")

    @classmethod
    def build(cls, depth: int, height: int, width: int, patch, stride=None) -> VolumeGrid:
        """A grid from user-style arguments: an int or three ints; ``stride=None`` means ``stride = patch``."""
        p = triple(patch, "patch")
        s = p if stride is None else triple(stride, "stride")
        return cls(int(depth), int(height), int(width), p, s)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(D, H, W): the shape of the voxel map."""
        return self.depth, self.height, self.width

    @property
    def planes(self) -> int:
        """Dw, the number of window planes along the depth."""
        return math.ceil((self.depth - self.patch[0]) / self.stride[0]) + 1

    @property
    def rows(self) -> int:
        """R, the number of window rows."""
        return math.ceil((self.height - self.patch[1]) / self.stride[1]) + 1

    @property
    def cols(self) -> int:
        """C, the number of window columns."""
        return math.ceil((self.width - self.patch[2]) / self.stride[2]) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Dw, R, C): the shape of the window grid (of ``delta``)."""
        return self.planes, self.rows, self.cols

    @property
    def size(self) -> int:
        """Dw*R*C, the number of windows (and of occluded forward passes)."""
        return self.planes * self.rows * self.cols

    def spans(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(starts, ends) of the windows along each axis (depth, rows, columns), ends exclusive and clipped."""
        return tuple(_spans(n, p, s) for n, p, s in zip(self.image_shape, self.patch, self.stride, strict=True))

    def window(self, i: int) -> tuple[int, int, int, int, int, int]:
        """``(front, back, top, bottom, left, right)`` of window ``i`` (raster order), back/bottom/right exclusive."""
        if not 0 <= i < self.size:
            raise IndexError(f"window {i} out of range 0..{self.size - 1}")
        index = np.unravel_index(i, self.shape)
        return tuple(int(v) for (s, e), k in zip(self.spans(), index, strict=True) for v in (s[k], e[k]))  # type: ignore[return-value]

    def windows(self) -> np.ndarray:
        """All windows as a ``(Dw*R*C, 6)`` array of ``(front, back, top, bottom, left, right)``, raster order."""
        index = np.unravel_index(np.arange(self.size), self.shape)
        return np.stack([v for (s, e), k in zip(self.spans(), index, strict=True) for v in (s[k], e[k])], axis=1)

    def _indicators(self) -> list[np.ndarray]:
        return [_indicator(n, p, s) for n, p, s in zip(self.image_shape, self.patch, self.stride, strict=True)]

    def coverage(self) -> np.ndarray:
        """D x H x W count of the windows covering each voxel (at least 1 everywhere)."""
        return _coverage(self._indicators())

    def voxel_map(self, values: np.ndarray, dtype=np.float64) -> np.ndarray:
        """D x H x W mean of the per-window ``values`` (Dw x R x C) over the windows covering each voxel: the
        pixel map's rule in 3-D. ``dtype=np.float32`` halves the map of a large volume."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.shape:
            raise ValueError(f"expected values of shape {self.shape}, got {values.shape}")
        return window_mean(values, self._indicators(), dtype)

    pixel_map = voxel_map  # the same name as Grid's, for code that serves images and volumes alike

    def to_json(self) -> dict:
        """The grid for a result's JSON (``grid_from_json`` reads it back)."""
        return {"depth": self.depth, "height": self.height, "width": self.width, "planes": self.planes,
                "rows": self.rows, "cols": self.cols, "patch": list(self.patch),
                "stride": list(self.stride)}  # fmt: skip


def grid_for(shape, patch, stride=None) -> Grid | VolumeGrid:
    """The windows of an image of ``shape`` (H, W) or a volume of ``shape`` (D, H, W), from user-style ``patch`` and
    ``stride`` (an int, or one value per axis; ``stride=None``: the patch)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return Grid.build(shape[0], shape[1], patch, stride)
    if len(shape) == 3:
        return VolumeGrid.build(shape[0], shape[1], shape[2], patch, stride)
    raise ConfigError(f"windows need an image (height, width) or a volume (depth, height, width), got shape {shape}")


def grid_from_json(d: dict) -> Grid | VolumeGrid | BandGrid | BandWindowGrid:
    """The grid a result's JSON holds (:meth:`Grid.to_json`, :meth:`VolumeGrid.to_json`, :meth:`BandGrid.to_json`,
    :meth:`BandWindowGrid.to_json`): a volume's has a depth, band occlusion's its bands, band windows' both bands
    and a 2-D window."""
    if "bands" in d and "windows" in d:
        bands = BandGrid(tuple(tuple(g) for g in d["bands"]), tuple(d["names"]), tuple(d["image_shape"]))
        w = d["windows"]
        return BandWindowGrid(bands, Grid(w["height"], w["width"], tuple(w["patch"]), tuple(w["stride"])))
    if "bands" in d:
        return BandGrid(tuple(tuple(g) for g in d["bands"]), tuple(d["names"]), tuple(d["image_shape"]))
    if "depth" in d:
        return VolumeGrid(d["depth"], d["height"], d["width"], tuple(d["patch"]), tuple(d["stride"]))
    return Grid(d["height"], d["width"], tuple(d["patch"]), tuple(d["stride"]))


@dataclass(frozen=True)
class BandGrid:
    """The windows of band occlusion (``patch="bands"``): window ``i`` is band group ``groups[i]`` (one or more
    channels) occluded over the whole image or volume. ``delta`` holds one δL per group (shape ``(B,)``); the
    per-pixel map is not defined, and :meth:`pixel_map` gives the per-*channel* one instead (each channel its
    group's δL: the pixel map's rule on the channel axis, where groups do not overlap). ``image_shape``: the
    spatial size of the input (H, W or D, H, W); ``names``: one name per group."""

    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    image_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        channels = sorted(c for g in self.groups for c in g)
        if not self.groups or channels != list(range(len(channels))) or len(self.names) != len(self.groups):
            raise ConfigError(f"band groups must partition the channels, got {self.groups}")

    @classmethod
    def build(cls, image_shape, channels: int, names=None) -> BandGrid:
        """One group per channel, or, with ``names`` (one per channel), one per distinct name, in the order the
        names first appear: channels of one name are occluded together (``["rgb", "rgb", "rgb", "nir"]``: 2)."""
        if names is None:
            return cls(tuple((c,) for c in range(channels)), tuple(str(c) for c in range(channels)),
                       tuple(int(n) for n in image_shape))  # fmt: skip
        order = list(dict.fromkeys(names))
        groups = tuple(tuple(c for c, n in enumerate(names) if n == name) for name in order)
        return cls(groups, tuple(order), tuple(int(n) for n in image_shape))

    @property
    def channels(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def shape(self) -> tuple[int]:
        """(B,): one window per band group."""
        return (len(self.groups),)

    @property
    def size(self) -> int:
        return len(self.groups)

    def pixel_map(self, values: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The C values of the channels: each its group's δL (``values``, one per group)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.shape:
            raise ValueError(f"expected values of shape {self.shape}, got {values.shape}")
        out = np.empty(self.channels, dtype=dtype)
        for v, group in zip(values, self.groups, strict=True):
            out[list(group)] = v
        return out

    def to_json(self) -> dict:
        return {"bands": [list(g) for g in self.groups], "names": list(self.names),
                "image_shape": list(self.image_shape), "patch": "bands"}  # fmt: skip


@dataclass(frozen=True)
class BandWindowGrid:
    """The windows of band windows (``patch=("bands", H, W)``): window ``(b, r, c)`` is band group ``b`` of
    ``bands`` occluded inside 2-D window ``(r, c)`` of ``space`` only (every other band, and the group outside the
    window, untouched). ``B x R x C`` windows, raster order band group, then rows, then columns (window ``i = (b*R
    + r)*C + c``); the 2-D windows follow :class:`Grid`'s rules (clipped at the edges). ``delta`` is ``B x R x C``;
    :meth:`pixel_map` the ``B x H x W`` map of each band group: its own ``R x C`` windows' δL put on the pixels by
    the 2-D pixel-map rule (the mean δL of the group's windows covering each pixel)."""

    bands: BandGrid
    space: Grid

    def __post_init__(self) -> None:
        if tuple(self.bands.image_shape) != self.space.image_shape:
            raise ConfigError(f"band windows: the bands' image {self.bands.image_shape} is not the windows' "
                              f"{self.space.image_shape}")  # fmt: skip

    @classmethod
    def build(cls, image_shape, channels: int, names, patch, stride=None) -> BandWindowGrid:
        """The band groups of :meth:`BandGrid.build` crossed with the 2-D windows of :meth:`Grid.build` on
        ``image_shape`` (H, W)."""
        height, width = (int(n) for n in image_shape)
        return cls(BandGrid.build((height, width), channels, names), Grid.build(height, width, patch, stride))

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        return self.bands.groups

    @property
    def names(self) -> tuple[str, ...]:
        return self.bands.names

    @property
    def channels(self) -> int:
        return self.bands.channels

    @property
    def patch(self) -> tuple[int, int]:
        """The 2-D window (height, width)."""
        return self.space.patch

    @property
    def stride(self) -> tuple[int, int]:
        return self.space.stride

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W): the spatial size of the input."""
        return self.space.image_shape

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, R, C): the shape of ``delta``."""
        return (self.bands.size, *self.space.shape)

    @property
    def size(self) -> int:
        """B*R*C, the number of windows (and of occluded forward passes)."""
        return self.bands.size * self.space.size

    def window(self, i: int) -> tuple[int, int, int, int, int]:
        """``(group, top, bottom, left, right)`` of window ``i`` (raster order), bottom/right exclusive."""
        if not 0 <= i < self.size:
            raise IndexError(f"window {i} out of range 0..{self.size - 1}")
        b, at = divmod(i, self.space.size)
        return (b, *self.space.window(at))

    def pixel_map(self, values: np.ndarray, dtype=np.float64) -> np.ndarray:
        """B x H x W: each band group's ``R x C`` δL (``values``, ``B x R x C``) as its pixel map
        (:meth:`Grid.pixel_map`)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.shape:
            raise ValueError(f"expected values of shape {self.shape}, got {values.shape}")
        return np.stack([self.space.pixel_map(v) for v in values]).astype(dtype, copy=False)

    def to_json(self) -> dict:
        return {**self.bands.to_json(), "windows": self.space.to_json(),
                "patch": [BANDS, *self.space.patch]}  # fmt: skip
