"""The settings of one explanation: a frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import ConfigError
from .fill import Fill, check_fill
from .grid import check_windows, pair
from .scoring import check_output

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32 exact; the others run a torch model under autocast
ENGINES = ("dense", "incremental", "auto")
DEFAULT_PATCH = 16  # the window when neither the user nor the model gives one


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


@dataclass(frozen=True)
class Settings:
    """What to occlude and how to score it. Build with :meth:`Settings.build` to validate user input."""

    patch: tuple[int, int] | None = (16, 16)  # None: the model's window (see for_model), resolved before it runs
    stride: tuple[int, int] | None = (16, 16)  # None (with patch None): the resolved patch
    fill: Fill = "gray"
    output: str = "logits"
    batch_size: int | None = None
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    engine: str = "auto"  # the engine asked for: dense, incremental or auto (the result says which ran)
    fast: bool = False  # approximate drill-down (see occlens.engines.drilldown)
    budget: float | None = None  # seconds: the anytime map reached by then (see occlens.engines.drilldown.anytime)
    all_classes: bool = False  # keep every class's δL and each occluded copy's top class
    threshold: float = 0.5  # a sigmoid head predicts the classes above it (multi-label verdicts)

    def __post_init__(self) -> None:
        if self.patch is None:  # the model's window, resolved by for_model; a stride given is checked now
            if self.stride is not None:
                object.__setattr__(self, "stride", pair(self.stride, "stride"))
        else:
            object.__setattr__(self, "patch", pair(self.patch, "patch"))
            object.__setattr__(self, "stride", pair(self.stride, "stride"))
            check_windows(self.patch, self.stride)  # before any work; the image size is checked by Grid
        object.__setattr__(self, "fill", check_fill(self.fill))
        check_output(self.output)
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ConfigError(f"batch_size must be a positive int or None (automatic), got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an int from 0 to 2**63 - 1, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be True or False, got {self.compile!r}")
        check_engine(self.engine)
        if not isinstance(self.fast, bool):
            raise ConfigError(f"fast must be True or False, got {self.fast!r}")
        if self.budget is not None:
            budget = self.budget
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
                raise ConfigError(f"budget must be a positive number of seconds or None (no deadline), got {budget!r}")
            object.__setattr__(self, "budget", float(budget))
        if not isinstance(self.all_classes, bool):
            raise ConfigError(f"all_classes must be True or False, got {self.all_classes!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise ConfigError(f"threshold must be a probability between 0 and 1 (exclusive), got {t!r}")
        object.__setattr__(self, "threshold", float(t))

    @classmethod
    def build(
        cls,
        patch=None,
        stride=None,
        fill="gray",
        output="logits",
        batch_size=None,
        seed=0,
        precision="fp32",
        compile=False,
        engine=None,
        fast=False,
        budget=None,
        all_classes=False,
        threshold=0.5,
    ) -> Settings:
        """Settings from user-style arguments; ``patch=None`` means the model's window (:meth:`for_model`),
        ``stride=None`` means ``stride = patch`` (a partition); ``engine=None`` means auto."""
        p = None if patch is None else pair(patch, "patch")
        s = p if stride is None else stride
        engine = "auto" if engine is None else engine
        speed = (precision, compile, engine, fast, budget)
        return cls(p, s, fill, output, batch_size, seed, *speed, all_classes, threshold)

    def for_model(self, patch_size: int | None) -> Settings:
        """These settings with the window resolved: the patch given, else the smallest multiple of the model's
        ``patch_size`` (its patch embedding's, :attr:`occlens.LoadedModel.patch`) that is at least
        :data:`DEFAULT_PATCH` (ViT-B/16: 16, ViT/14: 28, ViT-B/32: 32, Swin's 4: 16), else
        :data:`DEFAULT_PATCH`; the stride, when not given, equal to it."""
        if self.patch is not None:
            return self
        side = DEFAULT_PATCH if not patch_size else patch_size * -(-DEFAULT_PATCH // patch_size)
        patch = pair(side, "patch")
        return replace(self, patch=patch, stride=patch if self.stride is None else self.stride)

    def arguments(self) -> dict:
        """The keyword arguments of :func:`occlens.explain` that give these settings (all but ``output``,
        which a loaded model brings)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "output"}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = None if self.patch is None else list(self.patch)
        d["stride"] = None if self.stride is None else list(self.stride)
        if isinstance(self.fill, tuple):
            d["fill"] = list(self.fill)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        fill = d["fill"]
        fill = tuple(fill) if isinstance(fill, list) else fill
        keys = ("precision", "compile", "engine", "fast", "budget", "all_classes", "threshold")
        extra = {k: d[k] for k in keys if k in d}
        extra.setdefault("engine", "dense")  # written before the engine was a setting: dense is what ran
        window = [None if d[k] is None else tuple(d[k]) for k in ("patch", "stride")]
        return cls(*window, fill, d["output"], d["batch_size"], d["seed"], **extra)
