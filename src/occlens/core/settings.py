"""The settings of one explanation: a frozen dataclass, each option declared once (:mod:`occlens.core.declare`).

``Settings()`` means exactly what omitting every keyword of :func:`occlens.explain` means: ``patch=None``
is the model's own window, ``stride=None`` the patch (a partition), ``output=None`` the model's own head
(``"logits"`` for a bare module). :meth:`Settings.resolved` fills them in for a model before it runs; a
result's settings are resolved. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .checks import (
    BANDS,
    ENGINES,
    OUTPUTS,
    PRECISIONS,
    Fill,
    band_window,
    check_bool,
    check_engine,
    check_fill,
    check_int,
    check_output,
    check_precision,
    check_preprocess,
    check_probability,
    check_seconds,
    int_pair,
)
from .declare import declared, defaults, validate
from .errors import ConfigError, option, public
from .grid import check_windows, pair, triple

DEFAULT_PATCH = 16  # the window when neither the user nor the model gives one
DEFAULT_OUTPUT = "logits"  # a bare model's head when none is given


def _window(value: Any, name: str) -> tuple[Any, ...] | str | None:
    """A window: an int or (height, width) for an image, three ints (depth, height, width) for a volume; a patch
    may also be ``"bands"`` (each band of the image a window, :mod:`occlens.volumes`) or ``("bands", N)`` /
    ``("bands", H, W)``: band windows, each band group inside each 2-D window, held as ``("bands", H, W)``."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == BANDS:
        return BANDS  # a stride of bands is refused unless the patch is (Settings.__post_init__)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], str) and value[0].strip().lower() == BANDS:
        if name != "patch" or len(value) not in (2, 3):
            raise ConfigError(f"{option(name)} {tuple(value)!r} is not a window: band windows are a patch of "
                              f"('bands', N) or ('bands', H, W) (a stride is N or H,W)", option=name, value=value,
                              expected="('bands', N) or ('bands', H, W)")  # fmt: skip
        window = pair(value[1] if len(value) == 2 else tuple(value[1:]), name)
        return BANDS, window[0], window[1]
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return triple(value, name)
    return pair(value, name)


def _axes(window: tuple[int, ...], axes: int) -> tuple[int, ...]:
    """A square pair (what an int reads as) widened to ``axes`` values; anything else as it is."""
    return (window[0],) * axes if len(window) == 2 and axes == 3 and window[0] == window[1] else window


def _head(value: Any, name: str) -> str | None:
    return None if value is None else check_output(value, name)


@dataclass(frozen=True)
class Settings:
    """What to occlude and how to score it: the keywords of :func:`occlens.explain`, validated when built.

    Every public entry (``explain``, ``run``, ``evaluate``) takes ``settings=`` as well as these keywords
    (a keyword given beside it overrides it); the command's flags are generated from these declarations.
    """

    patch: tuple[Any, ...] | str | None = declared(  # ints, or ("bands", H, W): band windows
        None, "window size: N or H,W pixels, D,H,W voxels for a volume, bands: each band a window, or bands,N / "
        "bands,H,W: each band inside each N or HxW window (default: the model's patch size for a ViT-like model, "
        "else 16)", _window, parse=int_pair, metavar="N|H,W|D,H,W|bands[,N|,H,W]",
        output=True,
    )  # fmt: skip
    stride: tuple[int, ...] | None = declared(
        None, "window step: N, H,W or D,H,W (default: the patch size)", _window, parse=int_pair,
        metavar="N|H,W|D,H,W", output=True,
    )  # fmt: skip
    fill: Fill = declared("gray", "gray | mean | black | blur | noise | a value in [0,1]", check_fill, output=True)
    output: str | None = declared(
        None, f"what the model returns: {', '.join(OUTPUTS)} (default: the model's own, else logits)", _head,
        choices=OUTPUTS, flag=False,  # the command line gives it with the model's description (--output)
    )  # fmt: skip
    batch_size: int | None = declared(
        None, "occluded images per forward pass (default: automatic)", check_int(1, none="automatic"), parse=int
    )
    seed: int = declared(0, "seed of the noise fill", check_int(0, 2**63, largest="2**63 - 1"), parse=int, output=True)
    precision: str = declared(
        "fp32", "fp32 is exact; bf16/fp16 run the model under autocast (faster, approximate)", check_precision,
        choices=PRECISIONS, output=True,
    )  # fmt: skip
    compile: bool = declared(
        False, "run the model through torch.compile (pays off on long runs)", check_bool, switch=True
    )
    engine: str = declared(
        "auto", "incremental recomputes only what each window changes (exact; CNNs); auto uses it where the cost "
        "model predicts it pays; dense runs every occluded image through the model", check_engine, choices=ENGINES,
    )  # fmt: skip
    fast: bool = declared(
        False, "approximate: score a checkerboard of windows, then more where the map is rough, the rest "
        "interpolated", check_bool, switch=True, output=True,
    )  # fmt: skip
    budget: float | None = declared(
        None, "anytime map: coarse to fine, the best map reached in SECONDS per image (exact if it gets through; "
        "default: no deadline)", check_seconds, parse=float, metavar="SECONDS", output=True,
    )  # fmt: skip
    all_classes: bool = declared(
        False, "keep every class's map and what the model says instead for each window (npz; a panel in the "
        "figure)", check_bool, switch=True, output=True,
    )  # fmt: skip
    threshold: float = declared(
        0.5, "a sigmoid head (--output sigmoid) predicts the classes above this probability", check_probability,
        parse=float, output=True,
    )  # fmt: skip
    preprocess: str | dict | None = declared(
        None, "how a photo becomes the model's input, replacing the model's own: imagenet (resize 256, crop 224, "
        "ImageNet mean/std) or a torchvision weights name (its transforms, e.g. ResNet50_Weights.IMAGENET1K_V2); "
        "default: the model's own", check_preprocess, metavar="imagenet|WEIGHTS", output=True,
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
        if self.patch == BANDS:
            if self.stride not in (None, BANDS):
                raise ConfigError(f"patch='bands' occludes whole bands, which have no stride; got stride "
                                  f"{self.stride}: leave stride out", option="stride", value=self.stride)  # fmt: skip
            object.__setattr__(self, "stride", None)
        elif self.stride == BANDS:
            raise ConfigError("stride='bands' goes with patch='bands' only (band occlusion); give N or H,W",
                              option="stride", value=self.stride)  # fmt: skip
        elif (window := band_window(self.patch)) is not None:  # band windows: a 2-D stride, or the window's
            if self.stride is not None and len(self.stride) != 2:
                raise ConfigError(f"band windows {self.patch} step over a 2-D image: give a stride of N or H,W, got "
                                  f"{self.stride}", option="stride", value=self.stride)  # fmt: skip
            check_windows(window, self.stride or window)
        elif isinstance(self.patch, tuple) and self.stride is not None:  # a window: not None, not "bands"
            axes = max(len(self.patch), len(self.stride))  # an int given beside three values means all three
            object.__setattr__(self, "patch", _axes(self.patch, axes))
            object.__setattr__(self, "stride", _axes(self.stride, axes))
            check_windows(self.patch, self.stride)  # before any work; the image size is checked by Grid

    def resolved(self, patch_size: int | None = None, output: str | None = None) -> Settings:
        """These settings for a model: the patch given, else the smallest multiple of the model's
        ``patch_size`` (its patch embedding's, :attr:`occlens.LoadedModel.patch`) that is at least
        :data:`DEFAULT_PATCH` (ViT-B/16: 16, ViT/14: 28, ViT-B/32: 32, Swin's 4: 16), else
        :data:`DEFAULT_PATCH`; the stride, when not given, equal to it; the output given, else the model's
        ``output``, else :data:`DEFAULT_OUTPUT`."""
        patch = self.patch
        if patch is None:
            patch = pair(DEFAULT_PATCH if not patch_size else patch_size * -(-DEFAULT_PATCH // patch_size), "patch")
        # patch is a window or "bands" (the only str _window keeps), which has no stride
        stride = (band_window(patch) or patch) if self.stride is None and not isinstance(patch, str) else self.stride
        head = self.output or output or DEFAULT_OUTPUT
        if (patch, stride, head) == (self.patch, self.stride, self.output):
            return self
        return replace(self, patch=patch, stride=stride, output=head)

    def for_model(self, patch_size: int | None) -> Settings:
        """The window resolved for a model whose patch embedding has ``patch_size`` (the output left as it is)."""
        if self.patch is not None and self.stride is not None:
            return self
        window = self.resolved(patch_size)
        return replace(self, patch=window.patch, stride=window.stride)

    def merged(self, **keywords: Any) -> Settings:
        """These settings with each of ``keywords`` (a public function's, as received) that differs from its
        declared default put in: how ``settings=`` and keywords combine (a keyword given beside ``settings=``
        overrides it; one left at its default leaves the settings' value)."""
        given = {k: v for k, v in keywords.items() if k in _DEFAULTS and not _is_default(v, _DEFAULTS[k])}
        return replace(self, **given) if given else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = None if self.patch is None or isinstance(self.patch, str) else list(self.patch)
        d["stride"] = None if self.stride is None else list(self.stride)
        if isinstance(self.patch, str):
            d["patch"] = self.patch
        if isinstance(self.fill, tuple):
            d["fill"] = list(self.fill)
        return d  # preprocess is JSON's already (check_preprocess), a dict copied by asdict

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        fill = d["fill"]
        fill = tuple(fill) if isinstance(fill, list) else fill
        keys = ("precision", "compile", "engine", "fast", "budget", "all_classes", "threshold", "preprocess")
        extra = {k: d[k] for k in keys if k in d}
        extra.setdefault("engine", "dense")  # written before the engine was a setting: dense is what ran
        patch, stride = (d[k] if d[k] is None or isinstance(d[k], str) else tuple(d[k]) for k in ("patch", "stride"))
        return cls(patch, stride, fill, d["output"], d["batch_size"], d["seed"], **extra)


# a bad value's error ends its traceback at the user's Settings(...) (the same signature: functools.wraps)
Settings.__init__ = public(Settings.__init__)  # type: ignore[method-assign]
_DEFAULTS = defaults(Settings)


def _is_default(value: object, default: object) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def settings_with(settings: Settings | None, **keywords: Any) -> Settings:
    """The settings a public function runs with: ``settings`` (default: ``Settings()``) with the keywords
    that differ from their defaults put in, checked."""
    if settings is None:
        return Settings(**{k: v for k, v in keywords.items() if k in _DEFAULTS})
    if not isinstance(settings, Settings):
        raise ConfigError(f"{option('settings')} must be an occlens.Settings, got {type(settings).__name__}",
                          option="settings", value=settings, expected="an occlens.Settings")  # fmt: skip
    return settings.merged(**keywords)
