"""How ``occlens evaluate`` scores maps: the :class:`Scoring` options, each declared once
(:mod:`occlens.core.declare`; the command's flags are generated from them), and their checks. No torch here:
the command's ``--help`` reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.checks import DEFAULT_REMOVAL, DEFAULT_STEPS, REMOVALS, check_int, check_removal
from ..core.declare import declared, validate
from ..core.errors import ConfigError, option

METHODS = ("occlusion", "saliency", "gradient_x_input", "random")
DEFAULT_METHODS = ("occlusion", "saliency", "random")
GRANULARITIES = ("pixel", "window")
DEFAULT_GRANULARITY = "pixel"  # measured with DEFAULT_REMOVAL: benchmarks/faithfulness.py, README "Faithfulness"
DEFAULT_BOOTSTRAP = 10_000


def check_methods(methods: str | Sequence[str], name: str = "methods") -> tuple[str, ...]:
    """Method names (a comma-separated string or a sequence), de-duplicated, each one of :data:`METHODS`."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = tuple(dict.fromkeys(str(m).strip().lower() for m in items if str(m).strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ConfigError(f"unknown method {unknown[0] if unknown else methods!r} in {option(name)}; use "
                          f"{', '.join(METHODS)}", option=name, value=methods,
                          expected=f"methods from {', '.join(METHODS)}")  # fmt: skip
    return names


def check_granularity(granularity, name: str = "granularity") -> str:
    text = granularity.strip().lower() if isinstance(granularity, str) else granularity
    if text not in GRANULARITIES:
        raise ConfigError(
            f"unknown granularity {granularity!r}; use pixel, or window (the occlusion windows' cells)",
            option=name, value=granularity, expected="pixel or window",
        )  # fmt: skip
    return text


@dataclass(frozen=True)
class Scoring:
    """How evaluate scores the maps: frozen, each field declared, checked when built."""

    methods: tuple[str, ...] = declared(
        DEFAULT_METHODS, f"comma-separated, from {', '.join(METHODS)} (saliency = gradient)", check_methods,
        metavar="METHODS",
    )  # fmt: skip
    removal: str = declared(
        DEFAULT_REMOVAL, f"what a removed pixel becomes: {' | '.join(REMOVALS)} (gray 0.5, a blurred copy, ROAD's "
        "noisy linear imputation from the pixels left)", check_removal, metavar="REMOVAL",
    )  # fmt: skip
    granularity: str = declared(
        DEFAULT_GRANULARITY, f"what is removed at a time: {' | '.join(GRANULARITIES)} (window: the cells of the "
        "occlusion windows, --patch/--stride, each scored by the map's mean over it)", check_granularity,
        metavar="GRANULARITY",
    )  # fmt: skip
    steps: int = declared(DEFAULT_STEPS, "steps per curve (steps + 1 forward passes each)", check_int(1), parse=int)
    bootstrap: int = declared(
        DEFAULT_BOOTSTRAP, "resamples of the 95%% intervals over the images (0: no intervals)",
        check_int(0, none=None), parse=int, metavar="N",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
