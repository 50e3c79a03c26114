"""A dataset run's folder: where its images' files go, which images are finished, and discarding outputs.

Layout of DIR: ``images/STEM.json|.npz|.jpg`` per image (:data:`IMAGES`; the files and the stem scheme are
:mod:`occlens.app.outputs`'), ``manifest.sqlite`` (:mod:`occlens.app.manifest`) and ``report/``
(:mod:`occlens.present.report`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..core.records import Record
from .outputs import FIGURE, NIFTI, RUN_SUFFIXES, is_volume_file, run_outputs, wants_figure

IMAGES = "images"  # DIR/images: every image's files


def finished(record: Record | None, present: set[str], figures: str) -> bool:
    """Recorded as explained, and its files are there (``present``: :func:`files_under` of DIR/images),
    the figure too where ``figures`` asks for one."""
    if record is None or not record.ok:
        return False
    wanted = (*RUN_SUFFIXES, FIGURE) if wants_figure(figures, record.correct) else RUN_SUFFIXES
    if is_volume_file(record.path):  # a volume's map as NIfTI, too
        wanted = (*wanted, NIFTI)
    return all(record.stem + suffix in present for suffix in wanted)


def files_under(images: Path) -> set[str]:
    """The files below ``images``, as paths relative to it (POSIX): one listing per folder, no ``stat`` per
    file, so that resuming a finished run of 50,000 images takes well under a second here."""
    found: set[str] = set()
    for root, _, files in os.walk(images):
        prefix = Path(root).relative_to(images).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        found.update(prefix + name for name in files)
    return found


def discard(images: Path, records: Iterable[Record]) -> None:
    """Delete the outputs of ``records`` (before their manifest rows go)."""
    for record in records:
        for path in run_outputs(images / record.stem):
            path.unlink(missing_ok=True)
    for root, dirs, _ in os.walk(images, topdown=False):
        for d in dirs:
            try:
                Path(root, d).rmdir()
            except OSError:
                pass  # not empty: something of the user's
