"""The HTML report of a dataset run: ``DIR/report/index.html``, static and self-contained.

``index.html`` is a gallery of thumbnails with filters (correct / incorrect, true class, predicted
class, confidence) and sorting, the most confident mistakes, per-class counts and the failures;
``pages/NNNNN.html`` shows one image: its figure, the verdict, the δL map of the explained class and,
when the true class K differs, K's map too, the top-k classes and the numbers. Style and script are
inline, thumbnails are files in ``thumbs/``, the figures are the run's own ``DIR/images/STEM.png``:
nothing outside DIR is referenced, so the report works offline (move or zip DIR as a whole).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ...core.files import atomic_write
from .pages import Entry, image_page, index_page

FOLDER = "report"
THUMB = 160  # pixels, square
_PAGE = re.compile(r"^\d{5,}\.html$")
_THUMB = re.compile(r"^[0-9a-f]{16}\.jpg$")


def write_report(out: str | Path, records: Sequence, summary, title: str = "occlens run") -> Path:
    """Write ``out/report/`` for ``records`` (one :class:`occlens.app.manifest.Record` per image); return index.html.

    ``summary`` is :func:`occlens.app.runs.summarize` of the same records. Each file is written atomically;
    pages and thumbnails of images no longer in ``records`` are removed.
    """
    import matplotlib

    out = Path(out)
    folder = out / FOLDER
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    (folder / "thumbs").mkdir(exist_ok=True)
    entries = []
    for n, record in enumerate(r for r in records if r.ok):
        stem = out / "images" / record.stem
        data = json.loads(stem.with_name(stem.name + ".json").read_text(encoding="utf-8"))
        figure = "../../images/" + quote(record.stem) + ".png"
        entries.append(Entry(record, data, f"pages/{n:05d}.html", thumbnail(record, folder), figure))
    colormap = matplotlib.colormaps["RdBu"]
    for i, entry in enumerate(entries):
        before = entries[i - 1] if i > 0 else None
        after = entries[i + 1] if i + 1 < len(entries) else None
        write_text(folder / entry.page, image_page(entry, before, after, colormap))
    index = write_text(folder / "index.html", index_page(title, entries, summary))
    keep = {Path(e.page).name for e in entries} | {Path(e.thumb).name for e in entries if e.thumb}
    for sub, pattern in (("pages", _PAGE), ("thumbs", _THUMB)):
        for path in (folder / sub).iterdir():
            if pattern.match(path.name) and path.name not in keep:
                path.unlink()
    return index


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def thumbnail(record, folder: Path) -> str | None:
    """``thumbs/HASH.jpg``: a square centre crop of the image (made once); None if it cannot be read."""
    from PIL import Image, ImageOps

    from ...core.image import to_rgb

    name = hashlib.sha256(f"{record.stem}\n{record.path}".encode()).hexdigest()[:16] + ".jpg"
    path = folder / "thumbs" / name
    if not path.is_file():
        try:
            with Image.open(record.path) as img:
                img.draft("RGB", (2 * THUMB, 2 * THUMB))  # JPEG: decode at a reduced size, much faster
                small = ImageOps.fit(to_rgb(img), (THUMB, THUMB), Image.Resampling.BICUBIC)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        atomic_write(path, lambda f: small.save(f, format="JPEG", quality=85))
    return "thumbs/" + name
