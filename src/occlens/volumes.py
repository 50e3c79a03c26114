"""Explaining declared inputs: volumes (C x D x H x W) and band occlusion, for :func:`occlens.explain`.

:func:`occlens.explain` sends here what is declared a volume (an :class:`occlens.Volume`, a NIfTI file, a folder
holding one DICOM series), a multiband image (:class:`occlens.Bands`) and any input explained with
``patch="bands"``. The semantics are DESIGN §1's, unchanged:

* **Volumes**: windows of three values (depth, height, width), raster order depth -> rows -> columns, clipped at
  the edges (:class:`occlens.VolumeGrid`); ``result.delta`` is ``Dw x R x C``, ``result.pixel_map`` the ``D x H
  x W`` voxel map (the mean δL of the windows covering each voxel). Sub-targets first: ``deltas`` is ``T x Dw x
  R x C``. The fill lives in [0, 1] after the intensity window (gray = 0.5, the window's level).
* **Bands** (``patch="bands"``): window ``i`` is band ``i`` (or the group of bands that share a name) replaced by
  the fill over the whole image or volume; ``result.delta`` holds one δL per band group (shape ``(B,)``), and
  ``result.pixel_map`` one value per channel (its group's δL): there is no spatial map. A :class:`Bands` image
  explained with a spatial patch is explained by place, as any image, with any channel count.
* **Band windows** (``patch=("bands", N)`` or ``("bands", H, W)``, stride as for any 2-D window; the command's
  ``--patch bands,N`` / ``bands,H,W``): bands crossed with 2-D windows, of a :class:`Bands` image or any C x H x W
  image. Window ``(b, r, c)`` is band group ``b`` replaced by the fill inside 2-D window ``(r, c)`` only (every other
  band, and the group elsewhere, untouched; :class:`~occlens.core.grid.BandWindowGrid`); ``result.delta`` is ``B x
  R x C`` (sub-targets first: ``T x B x R x C``) and ``result.pixel_map`` is ``B x H x W``: each band group's own
  pixel map, the 2-D rule (the mean δL of the group's windows covering each pixel). Not for volumes yet.
* **Targets**: every kind but ``box``. A 3-D segmenter's region (:func:`occlens.targets.segment`) is a
  ``D x H x W`` mask or a box ``(z0, y0, x0, z1, y1, x1)`` in the volume's voxels, read on the model's output
  by voxel centres as a 2-D region is (:mod:`occlens.core.targets`); ``box`` is refused in one line, as there is
  no standard 3-D detection output.

Engines: ``engine="incremental"`` runs the exact incremental engine on a volume's windows (``Conv3d``, 3-D pooling
and batch norm recompute only the box each window changes, :mod:`occlens.engines.incremental_volume`; a model it
cannot trace runs dense, with one warning); ``"auto"`` runs it where the cost model predicts it pays, else dense;
band occlusion and band windows run dense. ``fast=True`` and ``budget=SECONDS`` work on a volume's windows (and a
band image's explained by place) as on a 2-D image's: the drill-down of :mod:`occlens.engines.drilldown` on three
axes, its chosen windows scored exactly by the exact engine chosen; ``result.engine`` starts with ``"drilldown+"`` or
``"anytime+"`` and ``result.meta["drilldown"]`` / ``["anytime"]`` say how many windows were scored. Band
occlusion and band windows refuse them: every window is scored. ``result.meta["input"]`` records the input (shape,
spacing, affine, the intensity window applied, band names, source), so a map can be written back on the input's
grid (:func:`to_nifti`), and ``result.preview`` a small copy of a volume (at most 64 voxels an axis, uint8) for
its figure and the report.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .core.checks import BANDS, band_window, is_bands
from .core.errors import ConfigError, ImageError, ModelError, option, shown
from .core.fill import baseline
from .core.grid import BandGrid, BandWindowGrid, Grid, VolumeGrid, triple
from .core.image import to_tensor
from .core.medical import read_bands, read_volume
from .core.progress import Progress
from .core.result import ClassMap, OcclusionResult, frozen_array
from .core.scoring import check_truth, log_probs, model_output
from .core.settings import Settings
from .core.targets import BoxTarget, Clean, as_target, class_scores
from .core.volume import Bands, Volume, volume_preview
from .engines.costmodel import counted
from .engines.drilldown import Approximate
from .engines.volume import VolumeDense, volume_batch_size
from .engines.volume_choice import VolumeIncremental, volume_engine, volume_plan
from .models.forward import call_model, make_forward, runnable_precision
from .models.loaded import unwrap
from .models.runner import computes_in_torch, prepared

NIFTI = (".nii", ".nii.gz")
TIFF = (".tif", ".tiff")


def is_declared(image) -> bool:
    """Whether ``image`` is declared a volume or a band image: a :class:`Volume` or :class:`Bands`, a NIfTI file
    or a folder (a DICOM series). A plain tensor never is: a ``1 x D x H x W`` tensor stays a D-channel image."""
    if isinstance(image, (Volume, Bands)):
        return True
    if isinstance(image, (str, os.PathLike)) and str(image).strip():
        name = str(image).lower()
        return name.endswith(NIFTI) or _dicom_folder(Path(image))
    return False


LOOK = 64  # entries of a folder looked at for a DICOM file


def _dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding a DICOM file (Part 10: ``DICM`` after the 128-byte preamble) among its
    first :data:`LOOK` entries; any other folder is left to the image path, which refuses it as no image file."""
    try:
        if not folder.is_dir():
            return False
        for n, entry in enumerate(os.scandir(folder)):
            if n >= LOOK:
                break
            if entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as f:
                    f.seek(128)
                    if f.read(4) == b"DICM":
                        return True
    except OSError:
        return False
    return False


def windows_for_image(settings: Settings) -> None:
    """Refuse, in one line, a volume's window on a 2-D image (what reaches the image path undeclared)."""
    for name in ("patch", "stride"):
        value = getattr(settings, name)
        if isinstance(value, tuple) and len(value) == 3:
            raise ConfigError(
                f"{option(name)} {shown(value)} has three values, a volume's window, but the input is a "
                f"2-D image; give N or H,W, or declare a volume (occlens.Volume(array), a .nii/.nii.gz file or a "
                f"DICOM folder)", option=name, value=value, expected="N or H,W for a 2-D image",
            )  # fmt: skip


def read_declared(image, patch, intensity=None) -> Volume | Bands | torch.Tensor:
    """The input as a :class:`Volume` or :class:`Bands`: read from its file or folder (with the ``intensity``
    window); a plain image given with ``patch="bands"`` (or band windows) stays a C x H x W tensor."""
    if isinstance(image, (Volume, Bands)):
        return image
    if isinstance(image, (str, os.PathLike)):
        if str(image).lower().endswith(TIFF) and is_bands(patch):
            return read_bands(image, intensity)
        if is_declared(image):
            return read_volume(image, intensity)
    return to_tensor(image)


def explain_declared(
    model,
    image,
    label=None,
    target=None,
    settings: Settings | None = None,
    *,
    device=None,
    progress: Progress | None = None,
) -> OcclusionResult:
    """:func:`occlens.explain` of a volume, a band image or band occlusion (this module's doc), with ``settings``
    (patch, stride, fill, output, batch size, seed, precision, compile, engine)."""
    start = time.perf_counter()
    settings = settings or Settings()
    if settings.all_classes:
        raise ConfigError(f"{option('all_classes')} is not available for volumes and band occlusion yet; leave it out "
                          f"(the exact dense map runs)", option="all_classes", value=True)  # fmt: skip
    given = read_declared(image, settings.patch)
    bare, _, output, names = unwrap(model, None, settings.output)
    settings = settings.resolved(None, output)
    x, record = _unit(given)
    grid = _grid(x, given, settings)
    # the settings record the grid's own window (three values for a volume)
    if isinstance(grid, BandGrid):
        _exact_bands(settings, grid)
        settings = replace(settings, patch=BANDS, stride=None)
    elif isinstance(grid, BandWindowGrid):  # the settings hold ("bands", H, W) and the 2-D stride already
        _exact_bands(settings, grid)
    else:
        settings = replace(settings, patch=grid.patch, stride=grid.stride)
    torch_model = computes_in_torch(bare)
    with prepared(bare, device) as runner:
        if not torch_model and (settings.precision != "fp32" or settings.compile):
            raise ConfigError("precision and compile apply to torch modules, and this model runs outside torch; run "
                              "it with precision='fp32' and compile=False")  # fmt: skip
        if torch_model and settings.precision != "fp32":
            settings = replace(settings, precision=runnable_precision(settings.precision, runner.device))
        forward = make_forward(runner.forward, runner.device, False, settings.precision, settings.compile)
        x_dev = x.to(runner.device)
        fill = baseline(x_dev, settings.fill, settings.seed)
        x_dev, fill = x_dev.to(runner.dtype), fill.to(runner.dtype)
        measured = None
        if runner.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(runner.device)
            before = torch.cuda.memory_allocated(runner.device)
        size = volume_batch_size(grid.size, x_dev, runner.device, None, settings.batch_size)  # one copy must fit
        try:
            clean_pass = lambda: call_model(forward, x_dev[None], "the unoccluded input")  # noqa: E731
            # engine="auto" reads the model's MACs: counted on this pass, once per model and shape
            raw = counted(bare, x_dev, clean_pass) if settings.engine == "auto" and torch_model else clean_pass()
        except torch.cuda.OutOfMemoryError:
            raise ModelError(f"out of memory on {runner.device} running the model on the input once") from None
        except ModelError:
            _check_channels(runner.channels, x)
            raise
        if runner.device.type == "cuda" and settings.batch_size is None:
            measured = max(torch.cuda.max_memory_allocated(runner.device) - before, 1)
            size = volume_batch_size(grid.size, x_dev, runner.device, measured, None)
        out = model_output(raw, 1)
        clean = None
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.is_floating_point():
            clean = log_probs(out, output)[0].numpy()
        elif label is not None:
            raise ConfigError(f"{option('label')} {shown(label)} is a class, but the model returns no class scores; "
                              f"leave the label out", option="label", value=label)  # fmt: skip
        label = check_truth(label, 0 if clean is None else len(clean), "label", names)
        if isinstance(label, tuple):
            raise ConfigError("a multi-label truth is not available for volumes yet; give one label")
        if x.ndim == 4 and isinstance(as_target(target), BoxTarget):
            _no_boxes(target)
        # the input as given is what the model sees: a region maps onto the output's voxels by their centres
        bound = as_target(target).bind(Clean(raw, clean, output, names, label, tuple(x.shape[1:]), None,
                                             tuple(x.shape[1:])))  # fmt: skip
        if x.ndim == 4 and bound.kind == "box":  # a model returning 2-D detections for a volume
            _no_boxes(target)
        sub = list(bound.classes) if bound.classes is not None else list(bound.names)
        keys = sub + ([label] if label is not None and label not in sub else [])

        def score(o, n: int) -> np.ndarray:
            mine = np.asarray(bound.score(o, n), dtype=np.float64).reshape(n, -1)
            if len(keys) == len(sub):
                return mine
            return np.concatenate([mine, class_scores([label], output)(o, n)], axis=1)

        clean_scores = score(out, 1)[0]
        plan = volume_plan(settings.engine, bare, x_dev, grid, out, settings.precision, settings.compile)
        exact = volume_engine(plan, forward, grid, size, settings.batch_size is not None)
        engine = _approximate(exact, grid, clean_scores, settings, start)
        occluded, size = engine.occluded_scores(x_dev, fill, score, progress)
    # ClassMap and OcclusionResult annotate a 2-D Grid but hold any grid (core.result reads all three back)
    maps = {k: ClassMap.compute(k, clean_scores[i], occluded[i], grid) for i, k in enumerate(keys)}  # type: ignore[arg-type]
    explained = bound.classes[0] if bound.classes is not None else as_target(target).spec() or bound.kind
    return OcclusionResult(
        predicted=None if clean is None else int(np.argmax(clean)),
        label=label,
        target=explained,
        probabilities=None if clean is None else frozen_array(np.exp(clean)),
        grid=grid,  # type: ignore[arg-type]  # any grid, as ClassMap.compute's above
        settings=settings,
        target_map=maps[sub[0]],
        target_maps=tuple(maps[k] for k in sub),
        target_kind=bound.kind,
        target_info=tuple(dict(i) for i in bound.info),
        label_map=None if label is None or label == explained else maps[label],
        device=str(runner.device),
        batch_size=size,
        engine=engine.name,
        seconds=time.perf_counter() - start,
        meta={"input": record, **getattr(engine, "notes", {})},
        labels=names,
        preview=volume_preview(x) if isinstance(grid, VolumeGrid) else None,  # a small copy, not the scan
    )


def _no_boxes(target) -> None:
    """Refuse, in one line, a box target on a volume: no standard 3-D detection output exists to match boxes in."""
    raise ConfigError(
        f"{option('target')} box is not available for volumes: there is no standard 3-D detection output to match "
        f"boxes in; explain a region with a segment target and a box region, segment:CLASS:Z0,Y0,X0,Z1,Y1,X1 "
        f"(occlens.targets.segment(cls, region=(z0, y0, x0, z1, y1, x1)), in voxels)",
        option="target", value=as_target(target).spec(), expected="segment with a box region",
    )  # fmt: skip


def _exact_bands(settings: Settings, grid: BandGrid | BandWindowGrid) -> None:
    """Refuse, in one line, the approximate modes on band occlusion and band windows: every window is scored."""
    if settings.fast or settings.budget is not None:
        used = "fast" if settings.fast else "budget"
        why = (f"band occlusion: its {grid.size} band window(s) are few and each is scored exactly"
               if isinstance(grid, BandGrid) else f"band windows: each of its {grid.size} windows is scored exactly")
        raise ConfigError(f"{option(used)} is not available for {why}; leave it out (fast and budget apply to a "
                          f"volume's or an image's spatial windows)", option=used,
                          value=getattr(settings, used))  # fmt: skip


def _approximate(exact: VolumeDense | VolumeIncremental, grid, clean, settings: Settings, start: float
                 ) -> VolumeDense | VolumeIncremental | Approximate:  # fmt: skip
    """``exact`` (the exact engine of the volume's windows), or the drill-down on it (``fast``) or the anytime map
    reached by ``start + budget`` (``budget``): :class:`~occlens.engines.drilldown.Approximate` on the volume's
    windows, as for a 2-D image."""
    if not settings.fast and settings.budget is None:
        return exact
    deadline = None if settings.budget is None else start + settings.budget
    return Approximate(exact, grid, clean, deadline)


def _unit(given) -> tuple[torch.Tensor, dict]:
    """The input in [0, 1] (C x D x H x W or C x H x W float32) and what the result records about it."""
    if isinstance(given, (Volume, Bands)):
        return given.unit(), given.to_json()
    return given, {"kind": "image", "shape": list(given.shape)}


def _grid(x: torch.Tensor, given, settings: Settings) -> Grid | VolumeGrid | BandGrid | BandWindowGrid:
    names = getattr(given, "names", None)
    if settings.patch == BANDS:
        return BandGrid.build(x.shape[1:], x.shape[0], names)
    if (window := band_window(settings.patch)) is not None:
        if x.ndim != 3:
            raise ConfigError(f"band windows ({option('patch')} bands,N or bands,H,W) cross bands with a 2-D "
                              f"image's windows, and the input is a volume; give patch='bands' (whole bands) or a "
                              f"volume's window D,H,W", option="patch", value=settings.patch,
                              expected="bands or D,H,W for a volume")  # fmt: skip
        return BandWindowGrid.build(x.shape[1:], x.shape[0], names, window, settings.stride)
    patch, stride = settings.patch, settings.stride
    # resolved settings (explain_declared's) hold a window and its stride; "bands" returned above
    assert isinstance(patch, tuple) and stride is not None, "_grid takes resolved settings"
    if x.ndim == 3:  # a Bands image explained by place: the 2-D windows, any channel count
        windows_for_image(settings)  # refuses three values: two are left
        return Grid.build(x.shape[1], x.shape[2], patch, stride)
    depth, height, width = x.shape[1:]
    return VolumeGrid(depth, height, width, _volume_window(patch, "patch"), _volume_window(stride, "stride"))


def _volume_window(value: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """A volume's window from the settings: three values, or a square pair (an int, as the settings store it) on
    every axis."""
    if len(value) == 2 and value[0] != value[1]:
        got = "x".join(map(str, value))
        raise ConfigError(f"{option(name)} {got} has two values, an image's window, but the input is a volume; give "
                          f"three (depth,height,width, e.g. {name}=(8, 16, 16)) or one", option=name, value=value,
                          expected="N or (D, H, W) for a volume")  # fmt: skip
    return triple(value if len(value) == 3 else value[0], name)


def _check_channels(expected: int | None, x: torch.Tensor) -> None:
    if expected is not None and expected != x.shape[0]:
        raise ImageError(f"the input has {x.shape[0]} channel(s) but the model's first layer expects {expected}")


def to_nifti(result: OcclusionResult, path, affine=None, sub_target: int = 0) -> Path:
    """:meth:`OcclusionResult.to_nifti <occlens.OcclusionResult.to_nifti>`: the voxel map of a volume's ``result``
    as a NIfTI file at ``path`` on the input's grid."""
    return result.to_nifti(path, affine, sub_target)
