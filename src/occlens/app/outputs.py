"""The output folder: one stem scheme for ``explain`` and ``run``, the files of an image, and clean-up.

``occlens explain`` writes ``STEM.png`` (the figure), ``STEM.json`` and ``STEM.npz`` (the result, in full).
A dataset run writes ``STEM.json`` and ``STEM.npz`` in the compact form
(:meth:`occlens.core.result.OcclusionResult.save`), ``STEM.jpg`` (the preview: the image as the model
saw it) and, where ``figures`` asks for one, ``STEM.png``. The stem
is the image's key without its suffix, made safe (no ``..``, no root: ``..png`` has the stem ``_``);
keys whose stems collide keep their suffix (``x_jpg``, ``x_png``). ``occlens explain`` writes flat
into ``--out`` (the file names are the keys; the same name twice is numbered ``x``, ``x-2``);
``occlens run`` keeps the dataset's folders under ``DIR/images/``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from ..core.files import atomic_write, printable
from .dataset import VOLUME_NAMES
from .options import FIGURES  # noqa: F401 (documented here too)

if TYPE_CHECKING:
    import numpy as np

    from ..core.result import OcclusionResult

SUFFIXES = (".png", ".json", ".npz")  # occlens explain's files
FIGURE, PREVIEW = ".png", ".jpg"
NIFTI = ".nii.gz"  # a volume's voxel map on its input's grid
RUN_SUFFIXES = (".json", ".npz", PREVIEW)  # what every explained image of a run has; FIGURE where asked
TEMPORARY = re.compile(r"^\..+\.part$")  # what files.atomic_write leaves when killed mid-write


def output_stems(keys: list[str], taken: dict[str, str] | None = None) -> dict[str, str]:
    """Each key's output stem: the key without its suffix, made safe (no ``..``, no root).

    Keys whose stems collide (``x.jpg`` and ``x.png``) keep their suffix as ``x_jpg``, ``x_png``.
    ``taken`` maps keys to stems already in use (from an earlier run); those keys keep them.
    A stem that still collides is a ConfigError.
    """
    taken = taken or {}
    plain = {k: _safe(_bare(k)) for k in keys}
    counts = Counter(plain.values())
    used = set(taken.values())
    stems = {k: taken[k] if k in taken else plain[k] for k in keys}
    for k in keys:
        if k not in taken and (counts[plain[k]] > 1 or plain[k] in used):
            stems[k] = f"{plain[k]}_{PurePosixPath(k).suffix[1:]}"
    owners: dict[str, str] = {}
    for key, stem in [*taken.items(), *stems.items()]:
        if owners.setdefault(stem, key) != key:
            raise ConfigError(
                f"images {owners[stem]} and {key} would both write outputs named {stem}; "
                f"rename one of them, or use another --out"
            )
    return stems


def _bare(key: str) -> str:
    """A key without its suffix: ``cat/001.jpg`` -> ``cat/001``, ``scan.nii.gz`` -> ``scan``."""
    for suffix in VOLUME_NAMES:
        if key.lower().endswith(suffix) and len(PurePosixPath(key).name) > len(suffix):
            return key[: -len(suffix)]
    return PurePosixPath(key).with_suffix("").as_posix()


def is_volume_file(path: str) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii``, ``.nii.gz``), whose run writes its map as NIfTI too."""
    return path.lower().endswith(VOLUME_NAMES)


def file_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The stems of image files written flat into one folder (``occlens explain``): the scheme of
    :func:`output_stems` on the file names, a name given again numbered ``x-2.png``, ``x-3.png``... (a
    number no other name has), so that every image gets outputs of its own."""
    keys: list[str] = []
    given = {printable(Path(p).name) or "_" for p in paths}
    for p in paths:
        name = printable(Path(p).name) or "_"  # "/" has no name (it is refused when read, not here)
        key, n = name, 1
        while key in keys or (n > 1 and key in given):
            n += 1
            key = f"{PurePosixPath(name).stem}-{n}{PurePosixPath(name).suffix}"
        keys.append(key)
    stems = output_stems(keys)
    return [stems[k] for k in keys]


def _safe(stem: str) -> str:
    parts = [p for p in PurePosixPath(stem).parts if p not in ("/", ".", "")]
    return "/".join(_short("__" if p == ".." else p) for p in parts) or "_"


LONGEST_PART = 200  # bytes of one folder or file name of a stem, leaving room for ".json" and a suffix


def _short(part: str) -> str:
    """A stem's folder or file name, cut to :data:`LONGEST_PART` bytes with a hash of the whole when longer
    (file names have at most 255 bytes; the same long name always gets the same short one)."""
    raw = os.fsencode(part)
    if len(raw) <= LONGEST_PART:
        return part
    cut = part[: LONGEST_PART - 11]
    while len(os.fsencode(cut)) > LONGEST_PART - 11:  # whole characters only
        cut = cut[:-1]
    return f"{cut}~{hashlib.sha256(raw).hexdigest()[:10]}"


def outputs(stem: Path, suffixes: Sequence[str] = SUFFIXES) -> list[Path]:
    """The files of one image whose outputs are named ``stem`` (``occlens explain``'s three by default)."""
    return [stem.with_name(stem.name + suffix) for suffix in suffixes]


def run_outputs(stem: Path) -> list[Path]:
    """Every file a dataset run may write for the image named ``stem`` (the figure too)."""
    return outputs(stem, (*RUN_SUFFIXES, FIGURE, NIFTI))


def wants_figure(figures: str, correct: bool | None) -> bool:
    """Whether ``figures`` (one of :data:`FIGURES`) draws the figure of an image with this verdict."""
    return figures == "all" or (figures == "mistakes" and correct is False)


def prepare_out(out: Path) -> None:
    """Make the output folder, and check that it is writable (a ConfigError that says so if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".occlens-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to output folder {out}: {err.strerror or err}; choose another with --out"
        ) from None


def write_outputs(
    result: OcclusionResult,
    image: np.ndarray,
    labels: Sequence[str],
    stem: Path,
    true_class: bool | None,
    saliency: np.ndarray | Sequence[np.ndarray] | None = None,
) -> None:
    """STEM.png (the figure), then STEM.npz and STEM.json; each written to a temporary name and renamed."""
    from ..present.figure import plot

    stem.parent.mkdir(parents=True, exist_ok=True)
    figure = plot(result, image, labels=labels, true_class=true_class, saliency=saliency)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    atomic_write(stem.with_name(stem.name + ".png"), lambda f: f.write(png.getvalue()))
    result.save(stem)


_FIGURES = None  # the worker's cached figures (occlens.present.figure.Figures), made on first use


def write_run_outputs(
    result: OcclusionResult, image: np.ndarray, labels: Sequence[str], stem: Path, true_class: bool | None, figure: bool
) -> None:
    """A dataset run's files of one image: STEM.jpg (the preview), STEM.png if ``figure`` (drawn with a
    cached figure per layout), then STEM.npz and STEM.json in the compact form; each atomically."""
    global _FIGURES
    stem.parent.mkdir(parents=True, exist_ok=True)
    preview = preview_jpeg(image)
    atomic_write(stem.with_name(stem.name + PREVIEW), lambda f: f.write(preview))
    if figure:
        from ..present.figure import Figures

        _FIGURES = Figures() if _FIGURES is None else _FIGURES
        png = _FIGURES.png(result, image, labels, true_class)
        atomic_write(stem.with_name(stem.name + FIGURE), lambda f: f.write(png))
    result.save(stem, compact=True)


def preview_jpeg(image: np.ndarray) -> bytes:
    """The image as the model saw it (after its resize and crop, before its normalisation), RGB, as JPEG
    (:func:`occlens.core.image.jpeg_bytes`)."""
    import numpy as np
    from PIL import Image

    from ..core.image import jpeg_bytes

    rgb = np.asarray(image, dtype=np.float32)  # H x W x C in [0, 1]
    if rgb.ndim == 3 and rgb.shape[2] != 3:
        rgb = np.repeat(rgb[:, :, :1], 3, axis=2)  # one channel: gray; more than 3: the first as gray
    return jpeg_bytes(Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), "RGB"))


def remove_temporary(out: Path, folders: Iterable[str]) -> None:
    """Delete what a killed run left half-written under ``out``'s ``folders`` (temporary files only;
    call with the folder locked), and the write probes of :func:`prepare_out`."""
    for folder in folders:
        for root, _, files in os.walk(out / folder):
            for name in files:
                if TEMPORARY.match(name):
                    Path(root, name).unlink(missing_ok=True)
    for probe in out.glob(".occlens-write-test-*"):
        probe.unlink(missing_ok=True)
