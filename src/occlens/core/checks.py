"""The checks of single option values, in one place and without torch: what the settings declarations
(:mod:`occlens.core.settings`), the command's flags and the HTTP API's fields all validate with.

Each check takes the value and the option's name, returns the value in canonical form, and raises a
:class:`~occlens.core.errors.ConfigError` whose message names the option with
:func:`~occlens.core.errors.option` (so each audience reads its own spelling) and whose fields say the value
and what was expected.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, option, shown

NAMED_FILLS = ("gray", "mean", "black", "blur", "noise")
OUTPUTS = ("logits", "probs", "log_probs", "sigmoid", "regression", "detections")  # what a model returns (its head)
NOT_CLASSES = ("regression", "detections")  # outputs that are not class scores (a declared regression, detections)
PRECISIONS = ("fp32", "bf16", "fp16")  # fp32 exact; the others run a torch model under autocast
ENGINES = ("dense", "incremental", "auto")
REMOVALS = ("gray", "blur", "road")  # what a removed pixel becomes in the faithfulness metrics
DEFAULT_REMOVAL = "road"  # measured: benchmarks/faithfulness.py, README "Faithfulness"
DEFAULT_STEPS = 20  # steps per removal curve
PRESETS = ("imagenet", "none")  # preprocess presets: ImageNet's resize, crop, mean and std; nothing at all
PREPROCESS_KEYS = ("size", "resize", "interpolation", "mean", "std", "channel_order")  # occlens.models.Preprocess's
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
WEIGHTS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*Weights\.[A-Za-z0-9_]+")  # torchvision's: ResNet50_Weights.DEFAULT

Fill = str | float | tuple[float, ...]


def _refuse(name: str, expected: str, value, fix: str | None = None) -> ConfigError:
    return ConfigError(f"{option(name)} must be {expected}, got {shown(value)}", option=name, value=value,
                       expected=expected, fix=fix)  # fmt: skip


def check_fill(fill, name: str = "fill") -> Fill:
    """Validate a fill setting and return it in canonical form (name, float or tuple of floats)."""
    if isinstance(fill, str):
        text = fill.strip().lower()
        if text == "grey":
            text = "gray"
        if text in NAMED_FILLS:
            return text
        try:
            return check_fill(float(text), name)
        except ValueError:
            pass
        expected = f"one of {', '.join(NAMED_FILLS)} or a number in [0, 1]"
        raise ConfigError(f"unknown fill {fill!r} for {option(name)}; use {expected}", option=name, value=fill,
                          expected=expected)  # fmt: skip
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        value = float(fill)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(
                f"{option(name)} value must lie in [0, 1] (image space, before normalisation), got {fill!r}",
                option=name, value=fill, expected="a number in [0, 1]",
            )  # fmt: skip
        return value
    if (
        isinstance(fill, (tuple, list))
        and fill
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in fill)
    ):
        values = tuple(float(check_fill(v, name)) for v in fill)
        return values[0] if len(values) == 1 else values
    raise _refuse(name, f"a name ({', '.join(NAMED_FILLS)}), a number or one number per channel", fill)


def check_output(output, name: str = "output") -> str:
    if not isinstance(output, str) or output not in OUTPUTS:
        raise _refuse(
            name,
            f"one of {', '.join(OUTPUTS)} (what the model returns: logits of a softmax, probabilities, "
            f"log-probabilities, logits of independent sigmoids, numbers in its own units, or detections)",
            output,
        )
    return output


def check_choice(choices: tuple[str, ...]):
    """A check that the value is one of ``choices``."""

    def check(value, name: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _refuse(name, f"one of {', '.join(choices)}", value)
        return value

    return check


check_precision = check_choice(PRECISIONS)
check_engine = check_choice(ENGINES)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(name, "True or False", value)
    return value


def check_progress(value, name: str = "progress") -> bool | None:
    """A job's ``progress``: None (a bar when someone watches: a notebook, or stderr a terminal), True or False."""
    if value is not None and not isinstance(value, bool):
        raise _refuse(name, "True (a bar), False (none) or None (a bar in a notebook or on a terminal)", value)
    return value


def check_int(low: int, high: int | None = None, none: str | None = None, largest: str | None = None):
    """A check of an int in ``[low, high)``; ``none``: what None means, when it is allowed; ``largest``: how the
    largest value allowed is written (``high - 1`` as a number, else)."""
    top = largest or (None if high is None else str(high - 1))
    expected = f"an int >= {low}" if high is None else f"an int from {low} to {top}"
    if none is not None:
        expected += f" or None ({none})"

    def check(value, name: str) -> int | None:
        if value is None and none is not None:
            return None
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not ok or value < low or (high is not None and value >= high):
            raise _refuse(name, expected, value)
        return int(value)

    return check


def check_seconds(value, name: str) -> float | None:
    """A positive, finite number of seconds, or None (no deadline)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise _refuse(name, "a positive number of seconds or None (no deadline)", value)
    return float(value)


def check_positive(value, name: str) -> float:
    """A positive, finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise _refuse(name, "a positive number", value)
    return float(value)


def check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise _refuse(name, "a probability between 0 and 1 (exclusive)", value)
    return float(value)


def check_number(value, name: str) -> float | None:
    """Any real number, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise _refuse(name, "a number", value)
    return value


def check_text(value, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _refuse(name, "a string", value)
    return value


def check_path(value, name: str, expected: str, fix: str) -> Path:
    """A path argument: a str or os.PathLike, not empty. Anything else (a model given where a path goes, the
    arguments in another order) is a ConfigError naming what came, what was ``expected`` and the ``fix``."""
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
        return Path(value)
    got = "an empty string" if isinstance(value, str) else shown(value)
    raise ConfigError(f"{name} must be {expected}, got {got}; {fix}", option=name, value=value, expected=expected,
                      fix=fix)  # fmt: skip


def int_pair(text: str) -> tuple[Any, ...] | str:
    """``"16"`` -> (16, 16); ``"16,24"`` or ``"16x24"`` -> (16, 24): a window as typed; three values, ``"8,16,16"``,
    a volume's window (depth, height, width); ``"bands"``: each band (channel) of the image is a window;
    ``"bands,16"`` or ``"bands,16,24"`` -> ("bands", 16, 16) or ("bands", 16, 24): each band inside each 2-D window
    (band windows, :func:`band_window`)."""
    if text.strip().lower() == BANDS:
        return BANDS
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    crossed = parts[0].lower() == BANDS
    numbers = parts[1:] if crossed else parts
    counts = (1, 2) if crossed else (1, 2, 3)
    if len(numbers) in counts and all(p.isascii() and p.lstrip("-").isdigit() for p in numbers):
        values = [int(p) for p in numbers]
        window = tuple(values) if len(values) == 3 else (values[0], values[-1])
        return (BANDS, window[0], window[1]) if crossed else window
    if crossed:
        raise ValueError(f"expected bands,N or bands,H,W (each band inside each 2-D window of N or HxW pixels), got "
                         f"{text!r}")  # fmt: skip
    raise ValueError(f"expected N or H,W (integers), got {text!r}; a volume takes D,H,W, band occlusion bands")


def intensity_text(text: str) -> str | tuple[float, float]:
    """An intensity window as typed: a preset's name (``ct-lung``), or ``LOW,HIGH``; checked where it is applied
    (:func:`occlens.core.intensity.check_window`)."""
    if "," not in text:
        return text.strip()
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected a preset name or LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


BANDS = "bands"  # patch="bands": a window is a whole band (channel), or a group of bands of one name


def band_window(patch) -> tuple[int, int] | None:
    """The 2-D window of band windows (``patch=("bands", H, W)`` as the settings hold it: each band group occluded
    inside each window), else None (a plain window, ``"bands"`` or no patch)."""
    if isinstance(patch, tuple) and len(patch) == 3 and patch[0] == BANDS:
        return int(patch[1]), int(patch[2])
    return None


def is_bands(patch) -> bool:
    """Whether ``patch`` occludes by band: ``"bands"`` (whole bands) or band windows (:func:`band_window`)."""
    return patch == BANDS or band_window(patch) is not None


def check_removal(removal, name: str = "removal") -> str:
    """The removal strategy's canonical name; anything else is a one-line ConfigError listing the choices."""
    text = removal.strip().lower() if isinstance(removal, str) else None
    if text == "grey":
        text = "gray"
    if text not in REMOVALS:
        raise ConfigError(f"unknown removal {shown(removal)}; use one of {', '.join(REMOVALS)}", option=name,
                          value=removal, expected=f"one of {', '.join(REMOVALS)}")  # fmt: skip
    return text


PREPROCESS_EXPECTED = (
    "'imagenet' (resize 256, crop 224, ImageNet mean/std), 'none' (the image as given), a torchvision weights enum "
    "or its name (e.g. ResNet50_Weights.IMAGENET1K_V2), an occlens.models.Preprocess or a mapping of its fields "
    f"({', '.join(PREPROCESS_KEYS)})"
)


def check_preprocess(value, name: str = "preprocess"):
    """How photos become a model's input, in a canonical, JSON-able spelling: None (the model's own), a preset
    (:data:`PRESETS`), a torchvision weights name (``"ResNet50_Weights.IMAGENET1K_V2"``; an enum member is
    spelt so), or a dict of :class:`occlens.models.Preprocess`'s fields (a Preprocess is turned into one).
    The fields' values are checked when the preprocessing is built (``occlens.models.recognise``)."""
    if value is None:
        return None
    if isinstance(value, enum.Enum) and callable(getattr(value, "transforms", None)):  # a torchvision weights enum
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in PRESETS:
            return text.lower()
        if WEIGHTS_NAME.fullmatch(text):
            return text
        raise ConfigError(f"unknown {option(name)} {value!r}; use {PREPROCESS_EXPECTED}", option=name, value=value,
                          expected=PREPROCESS_EXPECTED)  # fmt: skip
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in PREPROCESS_KEYS)
        missing = [k for k in ("size", "mean", "std") if k not in value]
        if unknown or missing:
            wrong = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            fields = ", ".join(PREPROCESS_KEYS)
            raise ConfigError(
                f"{option(name)} as a mapping takes the fields of occlens.models.Preprocess ({fields}; size, mean and "
                f"std required): {wrong}", option=name, value=value, expected=PREPROCESS_EXPECTED,
            )  # fmt: skip
        size = value["size"]
        size = [size, size] if isinstance(size, numbers.Integral) else size
        out = {
            "size": list(size) if isinstance(size, (list, tuple)) else size,
            "resize": value.get("resize"),
            "interpolation": value.get("interpolation", "bilinear"),
            "mean": _listed(value["mean"]),
            "std": _listed(value["std"]),
            "channel_order": value.get("channel_order", "RGB"),
        }
        if out["interpolation"] not in INTERPOLATIONS:
            raise _refuse(f"{name}", f"an interpolation of {', '.join(INTERPOLATIONS)}", out["interpolation"])
        return out
    raise _refuse(name, PREPROCESS_EXPECTED, value)


def _listed(values):
    """Numbers as a list (JSON's spelling), one number as a list of one; anything else as it is, for the check."""
    if isinstance(values, numbers.Real):
        return [float(values)]
    if isinstance(values, (list, tuple)):
        return [float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v for v in values]
    return values
