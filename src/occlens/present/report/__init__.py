"""The HTML report of a dataset run: ``DIR/report/``, static, drawn in the browser, updated as the run goes.

``index.html`` is the gallery: progress and summary, the most confident mistakes, per-class counts, the
failures, and every explained image as a card, filtered and sorted in the page (only the cards on
screen are built). ``image.html#id=ID`` is the one page for every image: it loads ``data/ID.js`` (the
image's δL grids, quantised, and its numbers) and draws the maps, the maps over the image and, for a
mistake, the true class K beside the explained class Q, on canvas, in the figures' colours. The input
preview is the run's ``IMAGES/STEM.jpg`` (the model's view; ``IMAGES`` is the folder of the run's image
files, ``DIR/images``) when there is one, else ``previews/ID.jpg``, made here from the image file; the
matplotlib figure ``IMAGES/STEM.png`` is shown when the run drew one. Everything is loaded with
``<script src>`` and ``<img src>`` by relative links: with ``IMAGES`` inside DIR, the report works
offline and from ``file://`` (move or zip DIR as a whole).

A target beyond a class (:mod:`occlens.core.result`) draws every sub-target's map once, under its name, with
its segment outlined or its box drawn over its pixel map; the decision box lists the sub-targets with their
clean score ``s`` and loss ``L = -s``. A model without class scores (a segmenter, a detector, a declared
regression) has no Q, P or top classes: its cards say what was explained (``segments: person, car``,
``boxes: 3``, ``regression: output 0 = 1.23``) and the summary claims no accuracy.

:func:`write_report` is cheap to call again while a run goes on: an image's data file (and preview) is
written once, named by a hash of its stem, path and finishing time; each call rewrites only the index
``index.js`` (atomically) and removes the files of images no longer listed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.errors import OcclensError
from ...core.files import atomic_write
from ...core.records import Record, Summary
from .data import image_data, image_link, index_data, script

if TYPE_CHECKING:
    from ...core.grid import Grid

FOLDER = "report"
DATA, PREVIEWS = "data", "previews"
STATIC = ("index.html", "image.html", "report.css", "colours.js", "report.js")  # colours.js: made by .colours
_DATA = re.compile(r"^[0-9a-f]{16}\.js$")
_PREVIEW = re.compile(r"^[0-9a-f]{16}\.jpg$")
# the files of the report's earlier layout (a page per image, thumbnails), removed when found
_OLD = (("pages", re.compile(r"^\d{5,}\.html$")), ("thumbs", re.compile(r"^[0-9a-f]{16}\.jpg$")))


def write_report(
    out: str | os.PathLike,
    records: Sequence[Record],
    summary: Summary,
    *,
    images: str | os.PathLike,
    title: str = "occlens run",
    total: int | None = None,
    stopped: bool = False,
) -> Path:
    """Write or update ``out/report/`` for ``records`` (one per image recorded so far, its files named
    ``images/STEM.*``: the result's ``.json`` and ``.npz``, the preview ``.jpg`` and the figure ``.png`` where
    the run wrote them); return its ``index.html``.

    ``summary`` is the summary of the same records; ``total``: how many images the run has in all, when
    known (the gallery shows the progress, and reads the report again while the run goes on); ``stopped``:
    the run ended before its last image (interrupted, or failed), so the page stops reading it again and
    says how to resume. Only images without a data file get one; every file is written atomically; data
    files and previews of images no longer in ``records`` are removed.
    """
    folder = Path(out) / FOLDER
    images = Path(images)
    link = Path(os.path.relpath(images, folder)).as_posix()  # the pages' links to the images' files
    for sub in (DATA, PREVIEWS):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in STATIC:
        write_static(folder, name)
    written = {DATA: listing(folder / DATA, _DATA), PREVIEWS: listing(folder / PREVIEWS, _PREVIEW)}
    entries, unreadable = [], []
    for record in records:
        if not record.ok:
            continue
        ident = image_id(record)
        if ident + ".js" in written[DATA]:
            thumb = preview_of(images, link, record, ident, written[PREVIEWS])
        else:
            try:
                thumb = write_image(folder, images, link, record, ident)
            except OcclensError as err:  # its outputs were deleted or damaged since: listed, not shown
                unreadable.append((record.key, str(err)))
                continue
        entries.append((record, ident, thumb))
    updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    index = index_data(entries, summary, title, total, len(records), updated, unreadable, stopped)
    atomic_write(folder / "index.js", lambda f: f.write(script("OCCLENS.index", index)))
    keep = {ident for _, ident, _ in entries}
    for sub, names in written.items():
        for name in names:
            if name.split(".")[0] not in keep:
                (folder / sub / name).unlink(missing_ok=True)
    remove_old_pages(folder)
    return folder / "index.html"


def image_id(record: Record) -> str:
    """The name of an image's files in the report: a hash of its stem, path and finishing time (an image
    explained again gets new files)."""
    return hashlib.sha256(f"{record.stem}\n{record.path}\n{record.finished}".encode()).hexdigest()[:16]


def write_image(folder: Path, images: Path, link: str, record: Record, ident: str) -> str | None:
    """``data/ID.js`` (and, when the run wrote no preview, ``previews/ID.jpg``); return the preview's link
    (``link``: the folder ``images`` as a link from the report's ``folder``)."""
    from ...core.result import OcclusionResult

    stem = images / record.stem
    result = OcclusionResult.load(stem)
    preview = image_link(link, record.stem, ".jpg") if stem.with_name(stem.name + ".jpg").is_file() else None
    if preview is None:
        preview = make_preview(record.path, folder / PREVIEWS / f"{ident}.jpg", result.grid)
    figure = image_link(link, record.stem, ".png") if stem.with_name(stem.name + ".png").is_file() else None
    data = image_data(result, record, preview, figure)
    atomic_write(folder / DATA / f"{ident}.js", lambda f: f.write(script("OCCLENS.image", ident, data)))
    return preview


def preview_of(images: Path, link: str, record: Record, ident: str, previews: set[str]) -> str | None:
    """The preview an image's data file was written with (see :func:`write_image`)."""
    if f"{ident}.jpg" in previews:
        return f"{PREVIEWS}/{ident}.jpg"
    stem = images / record.stem
    return image_link(link, record.stem, ".jpg") if stem.with_name(stem.name + ".jpg").is_file() else None


def make_preview(path: str, target: Path, grid: Grid) -> str | None:
    """``previews/ID.jpg``: the image at the grid's height x width (a centre crop to its shape, as the model's
    resize and crop do; :func:`occlens.core.image.jpeg_bytes`); None if the image cannot be read."""
    from PIL import Image, ImageOps

    from ...core.image import jpeg_bytes, to_rgb

    size = (grid.width, grid.height)
    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * grid.width, 2 * grid.height))  # JPEG: decode at a reduced size, much faster
            small = ImageOps.fit(to_rgb(img), size, Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    preview = jpeg_bytes(small)
    atomic_write(target, lambda f: f.write(preview))
    return f"{PREVIEWS}/{target.name}"


def write_static(folder: Path, name: str) -> None:
    """A page, the style sheet or the script, from the package; rewritten only when it differs."""
    text = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
    path = folder / name
    try:
        if path.read_bytes() == text:
            return
    except OSError:
        pass
    atomic_write(path, lambda f: f.write(text))


def listing(folder: Path, pattern: re.Pattern) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if pattern.match(e.name)}


def remove_old_pages(folder: Path) -> None:
    """The files of the report's earlier layout (a page per image, thumbnails), and their folders."""
    for sub, pattern in _OLD:
        if (folder / sub).is_dir():
            for path in (folder / sub).iterdir():
                if pattern.match(path.name):
                    path.unlink()
            try:
                (folder / sub).rmdir()
            except OSError:
                pass  # something else is in it
