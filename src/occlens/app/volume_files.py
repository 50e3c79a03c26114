"""``occlens explain`` on volumes and band occlusion: each input into ``OUT/STEM.json``, ``STEM.npz``, ``STEM.png``
(the slices figure, :mod:`occlens.present.slices`) and, for a volume read from a NIfTI file or a DICOM series,
``STEM.nii.gz``: the voxel map on the input's grid, with its affine, for the user's own viewer.

``scan.nii.gz`` gives the stem ``scan``. Every file of an input is written atomically, and the figure and the NIfTI
map only after the explanation succeeded: a bad input leaves nothing behind.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import OcclensError
from ..core.files import atomic_write
from ..core.grid import VolumeGrid
from ..core.progress import Bar
from ..core.result import OcclusionResult
from ..core.settings import Settings
from ..explanation import explain, named
from ..models.loaded import LoadedModel
from ..present.slices import plot_slices
from ..volumes import read_declared, to_nifti
from .options import Options
from .outputs import file_stems, prepare_out

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def stem_of(stem: str) -> str:
    """``scan.nii`` (what the 2-D scheme leaves of ``scan.nii.gz``) -> ``scan``."""
    for suffix in NIFTI_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def explain_volume_files(
    model: LoadedModel,
    files: Sequence[tuple[Path, int | str | None]],
    out: Path,
    settings: Settings,
    options: Options,
    on_error: Callable[[OcclensError], None] | None = None,
    intensity=None,
) -> tuple[list[tuple[str, OcclusionResult]], list[OcclensError]]:
    """:func:`occlens.app.job.explain_files` for volumes and band occlusion (this module's doc); ``intensity``: the
    intensity window files are read with (:func:`occlens.read_volume`)."""
    prepare_out(out)
    rows, errors = [], []
    stems = [stem_of(s) for s in file_stems([p for p, _ in files])]
    for number, ((path, label), stem) in enumerate(zip(files, stems, strict=True)):
        of = f" ({number + 1}/{len(files)})" if len(files) > 1 else ""
        try:
            given = read_declared(str(path), settings.patch, intensity)
            with Bar(options.progress, "windows", Path(path).name + of) as bar:
                # options.target is checked (app.options._target): a class, a target or a function, which explain
                # takes; its annotation here is only object
                result = explain(model, given, label, target=options.target,  # type: ignore[call-overload]
                                 progress=bar, settings=settings)  # fmt: skip
            assert isinstance(result, OcclusionResult)  # one input, one result (a list comes of a list of images)
            result = named(result, model, str(path), options.top_k) if isinstance(model, LoadedModel) else result
            write_volume_outputs(result, given, out / stem)
        except (OcclensError, OSError) as err:
            errors.append(err if isinstance(err, OcclensError) else OcclensError(f"{path}: {err}"))
            if on_error is not None:
                on_error(errors[-1])
            continue
        rows.append((stem, result))
    return rows, errors


def write_volume_outputs(result: OcclusionResult, given, stem: Path) -> list[Path]:
    """STEM.png (the slices or the band bars), STEM.npz and STEM.json, and STEM.nii.gz for a volume read from a
    file (its affine recorded); each atomically. Returns the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    volume = given if isinstance(result.grid, VolumeGrid) else None
    figure = plot_slices(result, volume)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    written = [stem.with_name(stem.name + ".png")]
    atomic_write(written[0], lambda f: f.write(png.getvalue()))
    written += list(result.save(stem))
    if isinstance(result.grid, VolumeGrid) and (result.meta.get("input") or {}).get("source"):
        written.append(to_nifti(result, stem.with_name(stem.name + ".nii.gz")))
    return written
