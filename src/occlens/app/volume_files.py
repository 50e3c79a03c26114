"""Volumes and band occlusion on files: ``occlens explain`` writes each input into ``OUT/STEM.json``, ``STEM.npz``,
``STEM.png`` (the slices figure, :mod:`occlens.present.slices`) and, for a volume read from a NIfTI file or a DICOM
series, ``STEM.nii.gz``: the voxel map on the input's grid, with its affine, for the user's own viewer. A dataset
run (:func:`occlens.app.job.process_volume`) writes a volume's ``images/STEM.json``, ``.npz`` (compact, with the
result's small preview of the volume), ``.nii.gz``, ``.jpg`` (the axial slice through the most negative window:
the gallery's card) and, where ``figures`` asks, ``.png``.

``scan.nii.gz`` gives the stem ``scan``. Every file of an input is written atomically, and the figure and the NIfTI
map only after the explanation succeeded: a bad input leaves nothing behind.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import OcclensError
from ..core.files import atomic_write
from ..core.grid import VolumeGrid
from ..core.result import OcclusionResult
from ..core.settings import Settings
from ..core.volume import Bands, Volume
from ..explanation import explain, named
from ..models.loaded import LoadedModel
from ..present.slices import plot_slices, worst_centre
from ..volumes import read_declared
from .options import Options
from .outputs import FIGURE, NIFTI, PREVIEW, file_stems, prepare_out, preview_jpeg, wants_figure
from .per_file import explain_each


def read_and_explain(model: LoadedModel, path: Path, label, settings: Settings, options: Options, target=None,
                     progress=False) -> tuple[Volume | Bands | torch.Tensor, OcclusionResult]:  # fmt: skip
    """Read the volume or band image at ``path`` (with ``options.intensity``) and explain it (``target``: this
    input's, else ``options.target``): ``(the input as read, its result named after the model)``."""
    given = read_declared(str(path), settings.patch, options.intensity)
    # options.target is checked (app.options._target): a class, a target or a function, which explain takes
    # although its annotation names a class only
    result = explain(model, given, label, target=options.target if target is None else target,  # type: ignore[arg-type]
                     progress=progress, settings=settings)  # fmt: skip
    assert isinstance(result, OcclusionResult)  # one input, one result (a list comes of a list of images)
    return given, named(result, model, str(path), options.top_k) if isinstance(model, LoadedModel) else result


def explain_volume_files(
    model: LoadedModel,
    files: Sequence[tuple[Path, int | str | None]],
    out: Path,
    settings: Settings,
    options: Options,
    on_error: Callable[[OcclensError], None] | None = None,
) -> tuple[list[tuple[str, OcclusionResult]], list[OcclensError]]:
    """:func:`occlens.app.job.explain_files` for volumes and band occlusion (this module's doc), read with
    ``options.intensity`` (:func:`occlens.read_volume`)."""
    prepare_out(out)

    def explain_one(path: Path, label, stem: str, bar) -> OcclusionResult:
        given, result = read_and_explain(model, path, label, settings, options, progress=bar)
        write_volume_outputs(result, given, out / stem)
        return result

    return explain_each(files, file_stems([p for p, _ in files]), options.progress, explain_one, on_error)


def write_volume_outputs(result: OcclusionResult, given, stem: Path) -> list[Path]:
    """STEM.png (the slices or the band bars), STEM.npz and STEM.json, and STEM.nii.gz for a volume read from a
    file (its affine recorded); each atomically. Returns the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = [_figure(result, given, stem), *result.save(stem)]
    if isinstance(result.grid, VolumeGrid) and (result.meta.get("input") or {}).get("source"):
        written.append(result.to_nifti(stem.with_name(stem.name + NIFTI)))
    return written


def write_volume_run(result: OcclusionResult, given: Volume | Bands | torch.Tensor, stem: Path, figures: str) -> None:
    """A dataset run's files of one volume (this module's doc), each atomically, the result's last."""
    if not isinstance(result.grid, VolumeGrid) or not isinstance(given, Volume):
        raise OcclensError("a dataset run explains volumes and images; band occlusion runs with `occlens explain`")
    stem.parent.mkdir(parents=True, exist_ok=True)
    unit = np.asarray(given.unit(), dtype=np.float32)[0]  # the first channel, in [0, 1]
    axial = unit[worst_centre(result)[0]]
    jpeg = preview_jpeg(axial[:, :, None])
    atomic_write(stem.with_name(stem.name + PREVIEW), lambda f: f.write(jpeg))
    result.to_nifti(stem.with_name(stem.name + NIFTI))
    if wants_figure(figures, result.correct):
        _figure(result, given, stem)
    result.save(stem, compact=True)


def _figure(result: OcclusionResult, given, stem: Path) -> Path:
    figure = plot_slices(result, given if isinstance(result.grid, VolumeGrid) else None)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    path = stem.with_name(stem.name + FIGURE)
    atomic_write(path, lambda f: f.write(png.getvalue()))
    return path
