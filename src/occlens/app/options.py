"""The options of the application's jobs, beyond the explanation's own :class:`~occlens.core.settings.Settings`:
frozen, validated when built, the same whether they come from Python keywords or the command's flags."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import ConfigError
from .outputs import FIGURES

MIN_JOBS_PER_WORKER = 8


def _named(name: str) -> str:
    """An option as both audiences know it: ``top_k (--top-k)``."""
    return f"{name} (--{name.replace('_', '-')})"


def _int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_named(name)} must be an int >= {low}, got {value!r}")
    return value


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Options:
    """What one image's job writes, and how a dataset run schedules its images.

    Per image: ``target`` (explain this class instead of Q: index or name), ``top_k`` (top classes
    recorded), ``also_true_class`` (draw K's map even when K = Q), ``compare`` (add the gradient
    saliency map to the figure), ``max_pixels`` (largest image accepted; None: Pillow's limit, 0: none).
    Dataset runs: ``figures`` (which images get a PNG figure: ``"mistakes"``, ``"all"`` or ``"none"``),
    ``workers`` (processes that decode and write while the model runs; Ray workers with ``ray``),
    ``force`` (start over where DIR holds other settings), ``ray``, ``address``, ``gpus_per_worker``,
    ``device`` (the Ray workers'), ``shared_fs`` (Ray workers write into DIR themselves).
    """

    target: int | str | None = None
    top_k: int = 5
    also_true_class: bool = False
    compare: bool = False
    max_pixels: int | None = None
    workers: int | None = None  # None: min(4, CPU cores)
    force: bool = False
    ray: bool = False
    address: str | None = None
    gpus_per_worker: float | None = None
    device: str | None = None  # where the Ray workers run the model; None: CUDA where they have it
    figures: str = "mistakes"
    shared_fs: bool = False

    def __post_init__(self) -> None:
        if self.figures not in FIGURES:
            raise ConfigError(f"{_named('figures')} must be one of {', '.join(FIGURES)}, got {self.figures!r}")
        if self.target is not None and (isinstance(self.target, bool) or not isinstance(self.target, (int, str))):
            raise ConfigError(f"{_named('target')} must be a class index or name, got {self.target!r}")
        _int(self.top_k, "top_k", 0)
        if self.max_pixels is not None:
            _int(self.max_pixels, "max_pixels", 0)
        for name in ("also_true_class", "compare", "force", "ray", "shared_fs"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{_named(name)} must be True or False, got {getattr(self, name)!r}")
        workers = default_workers() if self.workers is None else self.workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {workers}")
        object.__setattr__(self, "workers", workers)
        if self.address is not None and not isinstance(self.address, str):
            raise ConfigError(f"{_named('address')} must be a string (HOST:PORT), got {self.address!r}")
        f = self.gpus_per_worker
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float))):
            raise ConfigError(f"{_named('gpus_per_worker')} must be a number, got {f!r}")
