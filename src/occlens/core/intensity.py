"""Intensity windows: how 12-16-bit and float scanner data (CT Hounsfield units, MR signal, reflectances) become
the [0, 1] image space that fills and models see (DESIGN §1: gray is 0.5, the window's middle).

A window is declared, never guessed: a CT preset by name (width and level, in Hounsfield units), MR
percentiles (``"mr"``: the 0.5th to the 99.5th percentile of the volume's own voxels), or explicit ``(low,
high)``. ``low`` maps to 0, ``high`` to 1, values beyond are clipped (what a radiologist's window does); a
volume none of whose voxels falls inside the window is refused (the data are not what the window was declared
for). :meth:`IntensityWindow.to_json` is what a result records, with the bounds that were applied.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, ImageError, option, shown

CT_PRESETS = {  # name: (width, level) in Hounsfield units
    "ct-soft-tissue": (400.0, 40.0),
    "ct-lung": (1500.0, -600.0),
    "ct-bone": (1800.0, 400.0),
    "ct-brain": (80.0, 40.0),
}
PERCENTILE_PRESETS = {"mr": (0.5, 99.5)}
WINDOW_EXPECTED = (
    f"a preset ({', '.join([*CT_PRESETS, *PERCENTILE_PRESETS])}), a pair (low, high) of intensities, "
    "{'width': W, 'level': L}, {'percentiles': [lo, hi]} or None (intensities already in [0, 1])"
)


@dataclass(frozen=True)
class IntensityWindow:
    """Intensities ``low`` .. ``high`` mapped linearly onto 0 .. 1, clipped beyond.

    ``name``: the preset it came from (None: explicit bounds); ``percentiles``: for a window taken from the
    data's own percentiles, which :meth:`resolved` turns into bounds (``low``/``high`` are None until then).
    """

    low: float | None
    high: float | None
    name: str | None = None
    percentiles: tuple[float, float] | None = None

    @classmethod
    def preset(cls, name: str) -> IntensityWindow:
        if name in CT_PRESETS:
            width, level = CT_PRESETS[name]
            return cls(level - width / 2, level + width / 2, name)
        return cls(None, None, name, PERCENTILE_PRESETS[name])

    def _bounds(self) -> tuple[float, float] | None:
        """``(low, high)``, or None for percentiles not yet :meth:`resolved`: a window has both bounds or neither
        (:meth:`preset`, :meth:`resolved` and :func:`check_window` build them so)."""
        if self.low is None:
            return None
        assert self.high is not None, "a window has both bounds or neither"
        return self.low, self.high

    @property
    def width(self) -> float | None:
        bounds = self._bounds()
        return None if bounds is None else bounds[1] - bounds[0]

    @property
    def level(self) -> float | None:
        """The window's middle: the intensity that maps to 0.5 (the gray fill)."""
        bounds = self._bounds()
        return None if bounds is None else (bounds[0] + bounds[1]) / 2

    def resolved(self, data) -> IntensityWindow:
        """This window with its bounds: as it is when it has them, else from ``data``'s finite values' percentiles."""
        if self.percentiles is None or self.low is not None:
            return self
        values = _finite(data)
        low, high = (float(v) for v in np.percentile(values, self.percentiles))
        if not high > low:
            raise ImageError(
                f"the intensities' {self.percentiles[0]:g}th and {self.percentiles[1]:g}th percentiles are equal "
                f"({low:g}): the volume is (nearly) constant; declare an explicit intensity=(low, high)"
            )
        return IntensityWindow(low, high, self.name, self.percentiles)

    def apply(self, data) -> torch.Tensor:
        """``data`` (numpy or torch, any shape and dtype) as float32 in [0, 1]: ``(x - low) / (high - low)``, clipped.

        Refused (one line): non-finite values, and data none of which lies inside the window."""
        window = self.resolved(data)
        bounds = window._bounds()
        # resolved() gives percentiles their bounds; only a window built without bounds or percentiles has none
        assert bounds is not None, "an intensity window without bounds or percentiles"
        low, high = bounds
        x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ImageError("the intensities hold NaN or infinite values; fix or mask them before explaining")
        lowest, highest = float(x.min()), float(x.max())
        if highest <= low or lowest >= high:
            raise ImageError(
                f"all intensities (range [{lowest:g}, {highest:g}]) lie outside the window {window.describe()}: every "
                f"voxel would be {'0' if highest <= low else '1'}; declare a window that fits the data "
                f"(e.g. intensity='mr' for percentiles, or intensity=({lowest:g}, {highest:g}))"
            )
        out = x.to(torch.float32, copy=True)  # the one copy; the caller's data stay as they are
        return out.sub_(low).div_(high - low).clamp_(0.0, 1.0)

    def describe(self) -> str:
        """``ct-lung [-1350, 150]``: the window for messages."""
        bounds = "" if self.low is None else f"[{self.low:g}, {self.high:g}]"
        if self.percentiles is not None and self.low is None:
            bounds = f"percentiles {self.percentiles[0]:g}-{self.percentiles[1]:g}"
        return f"{self.name} {bounds}" if self.name else bounds

    def to_json(self) -> dict:
        """What a result records: the name, the bounds applied (after :meth:`resolved`), width and level."""
        out: dict[str, Any] = {"name": self.name, "low": self.low, "high": self.high, "width": self.width,
                               "level": self.level}  # fmt: skip
        if self.percentiles is not None:
            out["percentiles"] = list(self.percentiles)
        return out


def _finite(data) -> np.ndarray:
    values = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.reshape(-1)
    if values.size == 0:
        raise ImageError("the intensities hold no finite value")
    return values


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def check_window(value, name: str = "intensity") -> IntensityWindow | None:
    """An intensity window from how people declare one (:data:`WINDOW_EXPECTED`), or None; anything else is a
    one-line ConfigError. A mapping from :meth:`IntensityWindow.to_json` reads back as the window it records."""
    if value is None or isinstance(value, IntensityWindow):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "-")
        if text in CT_PRESETS or text in PERCENTILE_PRESETS:
            return IntensityWindow.preset(text)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_number(v) for v in value):
        low, high = float(value[0]), float(value[1])
        if high > low:
            return IntensityWindow(low, high)
        raise ConfigError(f"{option(name)} ({low:g}, {high:g}) must have low < high", option=name, value=value,
                          expected="a pair (low, high) with low < high")  # fmt: skip
    elif isinstance(value, Mapping):
        keys = set(value) - {"name"}
        if keys == {"width", "level"} and all(_number(value[k]) for k in keys) and value["width"] > 0:
            width, level = float(value["width"]), float(value["level"])
            return IntensityWindow(level - width / 2, level + width / 2, value.get("name"))
        percentiles = value.get("percentiles")
        if percentiles is not None and len(percentiles) == 2 and all(_number(v) for v in percentiles):
            lo, hi = (float(v) for v in percentiles)
            if 0 <= lo < hi <= 100:
                given: tuple[Any, Any] = (value.get("low"), value.get("high"))  # JSON's: checked here
                resolved = _number(given[0]) and _number(given[1]) and given[1] > given[0]
                return IntensityWindow(float(given[0]) if resolved else None, float(given[1]) if resolved else None,
                                       value.get("name"), (lo, hi))  # fmt: skip
        if {"low", "high"} <= keys and _number(value["low"]) and _number(value["high"]):
            return IntensityWindow(float(value["low"]), float(value["high"]), value.get("name"))
    raise ConfigError(f"unknown {option(name)} {shown(value)}; use {WINDOW_EXPECTED}", option=name, value=value,
                      expected=WINDOW_EXPECTED)  # fmt: skip


def to_unit(data, window: IntensityWindow | None, what: str = "volume") -> tuple[torch.Tensor, IntensityWindow | None]:
    """``data`` as float32 in [0, 1] and the window applied (resolved), or, without a window, ``data`` that must
    already lie in [0, 1] (anything else is refused in one line that names the windows to declare)."""
    if window is not None:
        window = window.resolved(data)
        return window.apply(data), window
    x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    if x.is_floating_point() and torch.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return x.to(torch.float32, copy=True), None
    span = f"{x.dtype} values in [{float(x.min()):g}, {float(x.max()):g}]" if x.numel() else "no values"
    raise ImageError(
        f"the {what} holds {span}, not intensities in [0, 1]; declare an intensity window: "
        f"intensity='ct-soft-tissue' (or another CT preset: {', '.join(CT_PRESETS)}), intensity='mr' (percentiles "
        f"0.5-99.5) or intensity=(low, high)"
    )
