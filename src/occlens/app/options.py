"""The options of the application's jobs, beyond the explanation's own :class:`~occlens.core.settings.Settings`:
frozen, each declared once (:mod:`occlens.core.declare`), validated when built, the same whether they come
from Python keywords or the command's flags (generated from these declarations). This module imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.checks import check_bool, check_choice, check_int, check_number, check_progress, check_text
from ..core.declare import declared, validate
from ..core.errors import ConfigError, option, shown

MIN_JOBS_PER_WORKER = 8
FIGURES = ("mistakes", "all", "none")  # which images of a run get a figure


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _target(value, name: str):
    """A class to explain (an index or a name), checked against the model later; or a target value."""
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    if callable(getattr(value, "bind", None)) and callable(getattr(value, "spec", None)):
        return value  # an occlens.targets.Target
    if callable(value) and not isinstance(value, type):  # a function of the model's output (occlens.targets)
        from ..core.targets import Function

        return Function(value)
    raise ConfigError(f"{option(name)} must be a class index or name, a target or a function of the model's output, "
                      f"got {shown(value)}", option=name, value=value,
                      expected="a class index or name, a target or a function")  # fmt: skip


def _intensity(value, name: str):
    """An intensity window as declared (a preset's name, ``(low, high)``, a mapping), checked
    (:func:`occlens.core.intensity.check_window`, imported only when one is given: it needs torch) and kept as
    given: plain data, for the fingerprint and the worker processes."""
    if value is None:
        return None
    from ..core.intensity import IntensityWindow, check_window

    window = check_window(value, name)
    if isinstance(value, IntensityWindow):
        return window.to_json() if window is not None else None
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else value


def _workers(value, name: str) -> int:
    return default_workers() if value is None else check_int(0)(value, name)


@dataclass(frozen=True)
class Options:
    """What one image's job writes, and how a dataset run schedules its images (see each field's help)."""

    target: object = declared(
        None, "explain this class instead of the prediction Q (index or name)", _target, output=True
    )
    top_k: int = declared(5, "how many top classes to print and record", check_int(0), parse=int, output=True)
    also_true_class: bool = declared(
        False, "draw the map of the true class K too (done anyway when K differs from Q)", check_bool, switch=True,
        output=True,
    )  # fmt: skip
    compare: bool = declared(
        False, "add the gradient saliency map (a backward-pass method) to the figure", check_bool, switch=True
    )
    max_pixels: int | None = declared(
        None, "largest image accepted, in pixels (default: Pillow's decompression-bomb limit; 0 = no limit)",
        check_int(0, none="Pillow's limit"), parse=int, output=True,
    )  # fmt: skip
    intensity: object = declared(
        None, "the intensity window volumes are read with (NIfTI, DICOM folder, TIFF with --patch bands) to [0, 1]: "
        "a CT preset (ct-soft-tissue, ct-lung, ct-bone, ct-brain), mr (its 0.5-99.5th percentiles) or (low, high); "
        "None: intensities already in [0, 1]", _intensity, output=True, flag=False,
    )  # fmt: skip
    workers: int | None = declared(
        None, "processes that decode images and write outputs while the model runs (0: all in this process; "
        f"fewer when there are under {MIN_JOBS_PER_WORKER} images per worker to do); with --ray: Ray workers, "
        "each loading the model once (default: min(4, CPU cores))", _workers, parse=int,
    )  # fmt: skip
    force: bool = declared(
        False, "if DIR holds a run with other settings, delete it and start over", check_bool, switch=True
    )
    ray: bool = declared(
        False, "explain the images on Ray workers (pip install 'occlens[ray]'): a local Ray instance, or --address",
        check_bool, switch=True, group="ray",
    )  # fmt: skip
    address: str | None = declared(
        None, "join the Ray cluster at this address (HOST:PORT of the head node, ray://HOST:PORT, auto)", check_text,
        group="ray",
    )  # fmt: skip
    gpus_per_worker: float | None = declared(
        None, "GPUs per Ray worker: 1, or 0.25 for 4 workers per GPU; None: the cluster's GPUs shared evenly by the "
        "workers, at most 1 each, and none with --device cpu", check_number, parse=float, metavar="F", group="ray",
    )  # fmt: skip
    device: str | None = declared(
        None, "cpu or cuda (default: cuda when available)", check_text
    )  # where the model runs (the Ray workers' too)
    figures: str = declared(
        "mistakes", "which images get a PNG figure (DIR/images/STEM.png) beside their result and preview: the "
        "mistakes (K != Q; none for unlabelled data), all, or none; the report draws every image's maps itself",
        check_choice(FIGURES), choices=FIGURES,
    )  # fmt: skip
    shared_fs: bool = declared(
        False, "DIR is on a filesystem every node mounts at the same path: the Ray workers write their images' files "
        "into it themselves (each atomically) and send back only the records", check_bool, switch=True, group="ray",
    )  # fmt: skip
    progress: bool | None = declared(
        None, "a progress bar: None, when someone watches (a notebook, or stderr a terminal); True, always; False, "
        "never, and no notes on stderr either (the command's -q, which every command takes)", check_progress,
        flag=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
