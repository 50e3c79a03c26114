"""Volumes and band images, declared: what says that an input is a 3-D scan or a stack of spectral bands.

A ``1 x D x H x W`` tensor on its own stays what it always was, a 2-D image with D channels; a volume is
declared by its source (:func:`occlens.core.medical.read_volume`: a NIfTI file, a DICOM series folder) or by
wrapping it: ``occlens.Volume(array, spacing=..., affine=..., intensity=...)``. The wrapper keeps the raw
intensities (int16 Hounsfield units stay int16: no copy), the voxel spacing, the orientation (the affine from
voxel indices to world millimetres) and the intensity window that maps the intensities to [0, 1]
(:mod:`occlens.core.intensity`); :meth:`Volume.unit` gives the [0, 1] float32 volume fills and models see.

Axes: ``C x D x H x W`` (torch's order for ``Conv3d``); ``Volume.affine`` maps a voxel index ``(d, h, w, 1)``
to world coordinates ``(x, y, z, 1)`` in millimetres, RAS+ as in NIfTI (a DICOM series' LPS positions are
turned into RAS), so a map on the volume's grid saves as a NIfTI file with this affine unchanged.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .errors import ConfigError, ImageError, shown
from .intensity import IntensityWindow, check_window, to_unit


def _tensor(array, what: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        wide = {torch.uint16: torch.int32, torch.uint32: torch.int64}.get(array.dtype)  # torch's min/max lack these
        return array.detach() if wide is None else array.detach().to(wide)
    try:
        values = np.asarray(array)
    except (TypeError, ValueError) as err:
        raise ImageError(f"a {what} takes a numpy array or a torch tensor, got {shown(array)} ({err})") from None
    if values.dtype.kind not in "biuf":
        raise ImageError(f"a {what} takes numbers, got an array of {values.dtype}")
    if values.dtype == np.uint16 or values.dtype == np.uint32:  # torch has no arithmetic on these: widen, exactly
        values = values.astype(np.int32 if values.dtype == np.uint16 else np.int64)
    return torch.from_numpy(values) if values.flags.writeable else torch.from_numpy(values.copy())


def _spacing(value) -> tuple[float, float, float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * 3
    ok = isinstance(value, (tuple, list, np.ndarray)) and len(value) == 3
    if ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        out = tuple(float(v) for v in value)
        if all(math.isfinite(v) and v > 0 for v in out):
            return out  # type: ignore[return-value]
    expected = "three positive numbers (depth, row and column spacing in mm) or one"
    raise ConfigError(f"spacing must be {expected}, got {shown(value)}", option="spacing", value=value,
                      expected=expected)  # fmt: skip


def _affine(value) -> np.ndarray:
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    ok = a is not None and a.shape == (4, 4) and np.isfinite(a).all() and np.allclose(a[3], (0, 0, 0, 1))
    if a is not None and ok and abs(np.linalg.det(a[:3, :3])) > 1e-12:  # a is not None: for mypy, ok says so
        a.setflags(write=False)
        return a
    expected = "a 4 x 4 matrix from voxel (d, h, w, 1) to world (x, y, z, 1), last row 0 0 0 1, invertible"
    raise ConfigError(f"affine must be {expected}, got {shown(value)}", option="affine", value=value,
                      expected=expected)  # fmt: skip


class _Windowed:
    """What a :class:`Volume` and a :class:`Bands` image share: raw intensities and the window that maps them to
    [0, 1], resolved once (an ``"mr"`` window's percentiles; without a window, the check that the values lie in
    [0, 1]). :meth:`unit` makes a new float32 array each call: a caller writing into it changes nothing kept, and
    the object holds no float copy of a scan beside its raw intensities."""

    array: torch.Tensor
    intensity: IntensityWindow | None
    _what: ClassVar[str]

    @functools.cached_property
    def _window(self) -> IntensityWindow | None:
        return to_unit(self.array, self.intensity, self._what)[1]

    def unit(self) -> torch.Tensor:
        """The float32 array in [0, 1] after the intensity window: a new tensor each call."""
        if "_window" in self.__dict__:  # resolved before: its bounds as they were (an "mr" window's percentiles)
            return to_unit(self.array, self._window, self._what)[0]
        x, self.__dict__["_window"] = to_unit(self.array, self.intensity, self._what)  # resolved on the way
        return x

    @property
    def applied_intensity(self) -> IntensityWindow | None:
        """The window :meth:`unit` applies, with its bounds (an ``"mr"`` window's from this array's percentiles)."""
        return self._window


@dataclass(frozen=True, eq=False)
class Volume(_Windowed):
    """A volume, declared: ``array`` C x D x H x W (or D x H x W: one channel), any channel count, raw intensities.

    ``spacing``: voxel size (depth, row, column) in mm; default: from ``affine``, else 1 mm. ``affine``: 4 x 4,
    voxel index ``(d, h, w, 1)`` to world mm (RAS+); default: the spacing on the diagonal. Both given must agree.
    ``intensity``: the intensity window (:func:`~occlens.core.intensity.check_window`: a CT preset, ``"mr"``,
    ``(low, high)``) or None for intensities already in [0, 1]. ``names``: a name per channel, or None.
    ``source``: where it was read from, for messages and results.
    """

    array: torch.Tensor
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    intensity: IntensityWindow | None = None
    names: tuple[str, ...] | None = None
    source: str | None = field(default=None, repr=False)
    _what: ClassVar[str] = "volume"  # unit() is C x D x H x W

    if TYPE_CHECKING:  # what the constructor takes; the fields hold it checked (a tensor, three floats, 4 x 4)

        def __init__(self, array: torch.Tensor | np.ndarray, spacing: float | Sequence[float] | None = None,
                     affine: np.ndarray | Sequence[Sequence[float]] | None = None,
                     intensity: IntensityWindow | str | Sequence[float] | Mapping[str, Any] | None = None,
                     names: Sequence[str] | None = None, source: str | None = None) -> None: ...  # fmt: skip

    def __post_init__(self) -> None:
        x = _tensor(self.array, "Volume")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or min(x.shape) < 1:
            raise ImageError(
                f"a Volume is C x D x H x W or D x H x W, got shape {tuple(x.shape)}; a 2-D image needs no wrapper"
            )
        affine = None if self.affine is None else _affine(self.affine)
        spacing = None if self.spacing is None else _spacing(self.spacing)
        from_affine: tuple[float, float, float] | None = None
        if affine is not None:
            d, h, w = (float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
            from_affine = d, h, w
        if spacing is not None and from_affine is not None and not np.allclose(spacing, from_affine, rtol=1e-3):
            raise ConfigError(
                f"spacing {spacing} disagrees with the affine's voxel size {tuple(round(v, 4) for v in from_affine)}; "
                f"give one of them, or both consistent", option="spacing", value=self.spacing,
            )  # fmt: skip
        spacing = spacing or from_affine or (1.0, 1.0, 1.0)
        if affine is None:
            affine = _affine(np.diag([*spacing, 1.0]))
        names = None if self.names is None else tuple(str(n) for n in self.names)
        if names is not None and len(names) != x.shape[0]:
            raise ConfigError(f"names has {len(names)} entries for {x.shape[0]} channels; give one name per channel",
                              option="names", value=self.names)  # fmt: skip
        for key, value in (("array", x), ("spacing", spacing), ("affine", affine), ("names", names),
                           ("intensity", check_window(self.intensity, "intensity"))):  # fmt: skip
            object.__setattr__(self, key, value)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return self.array.shape[0]

    @property
    def size(self) -> tuple[int, int, int]:
        """(D, H, W): the voxels of one channel."""
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    def to_json(self) -> dict:
        """What a result records about its input: shape, spacing, affine, the window applied, channel names."""
        window = self.applied_intensity
        assert self.spacing is not None and self.affine is not None  # __post_init__ fills both in
        return {"kind": "volume", "shape": list(self.shape), "spacing": list(self.spacing),
                "affine": [list(map(float, row)) for row in self.affine],
                "intensity": None if window is None else window.to_json(), "names": None if self.names is None
                else list(self.names), "source": self.source}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Bands(_Windowed):
    """A 2-D image of any number of bands, declared: ``array`` C x H x W (a multiband TIFF's), raw intensities.

    ``intensity``: as :class:`Volume`'s, one window for every band (None: already in [0, 1]); ``names``: a name per
    band (from the file, or given), or None.
    """

    array: torch.Tensor
    intensity: IntensityWindow | None = None
    names: tuple[str, ...] | None = None
    source: str | None = field(default=None, repr=False)
    _what: ClassVar[str] = "band image"  # unit() is C x H x W

    if TYPE_CHECKING:  # what the constructor takes (as Volume's); the fields hold it checked

        def __init__(self, array: torch.Tensor | np.ndarray,
                     intensity: IntensityWindow | str | Sequence[float] | Mapping[str, Any] | None = None,
                     names: Sequence[str] | None = None, source: str | None = None) -> None: ...  # fmt: skip

    def __post_init__(self) -> None:
        x = _tensor(self.array, "Bands image")
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or min(x.shape) < 1:
            raise ImageError(f"a Bands image is C x H x W (or H x W), got shape {tuple(x.shape)}")
        names = None if self.names is None else tuple(str(n) for n in self.names)
        if names is not None and len(names) != x.shape[0]:
            raise ConfigError(f"names has {len(names)} entries for {x.shape[0]} bands; give one name per band",
                              option="names", value=self.names)  # fmt: skip
        for key, value in (("array", x), ("names", names), ("intensity", check_window(self.intensity, "intensity"))):
            object.__setattr__(self, key, value)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    def to_json(self) -> dict:
        window = self.applied_intensity
        return {"kind": "bands", "shape": list(self.shape), "intensity": None if window is None else window.to_json(),
                "names": None if self.names is None else list(self.names), "source": self.source}  # fmt: skip


PREVIEW_SIDE = 64  # voxels a side, at most, of the preview a volume's result keeps (64³ uint8: 256 KiB)


def volume_preview(unit, side: int = PREVIEW_SIDE) -> np.ndarray:
    """A small copy of a volume for a result to keep (not the scan itself): the first channel of ``unit`` (C x D x
    H x W or D x H x W in [0, 1]) sampled to at most ``side`` voxels an axis (the voxel nearest each cell's centre),
    as uint8 (0..255)."""
    v = np.asarray(unit.detach().cpu() if isinstance(unit, torch.Tensor) else unit, dtype=np.float32)
    v = v[0] if v.ndim == 4 else v
    picks = [((np.arange(min(n, side)) + 0.5) * n / min(n, side)).astype(np.intp) for n in v.shape]
    small = v[np.ix_(*picks)]
    return np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)


def preview_at(preview: np.ndarray, shape) -> np.ndarray:
    """A :func:`volume_preview` blown up to the volume's ``shape`` (D, H, W) by nearest neighbour, float32 in [0, 1]."""
    picks = [np.minimum((np.arange(n) * p) // n, p - 1) for n, p in zip(shape, preview.shape, strict=True)]
    return preview[np.ix_(*picks)].astype(np.float32) / 255
