"""The insight page (``occlens insight``): ``insight.html`` with ``insight.js``, ``insight.css``, ``colours.js``
and its data ``insight-data.js`` (``OCCLENS_INSIGHT({...})``, loaded with ``<script src>``: it works from
``file://``, nothing from a CDN). Per class and confusion the mean δL map and its spread, the strategies (each
its mean map and typical images, most unusual first), the per-class numbers with their intervals, and one
sortable table of every image (the worst-localised one click away), each row linked to the run's image page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .data import image_link, script

STATIC = ("insight.html", "insight.js", "insight.css", "colours.js")
PAGE = "insight.html"


def _clean(value):
    """JSON-ready: NaN and infinities as null, tuples as lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def page_data(summary: dict, rows: Sequence[dict], comparison, records: dict, run: Path, out: Path,
              columns: Sequence[str]) -> dict:  # fmt: skip
    """What the page shows: the summary's views and the image rows, each with the links (relative to ``out``)
    to the run's preview ``images/STEM.jpg`` and its image page ``report/image.html#id=ID``."""
    from . import FOLDER, image_id

    images = Path(os.path.relpath(Path(run).absolute() / "images", Path(out).absolute())).as_posix()
    report = Path(os.path.relpath(Path(run).absolute() / FOLDER, Path(out).absolute())).as_posix()
    links = {}
    for key, r in records.items():
        links[key] = [image_link(images, r.stem, ".jpg"), f"{report}/image.html#id={image_id(r)}"]
    keys = sorted({r["key"] for r in rows} | {k for r in (comparison or []) for k in [r["key"]]})
    return _clean({
        **summary,
        "columns": list(columns),
        "rows": [[r.get(c) for c in columns] for r in rows],
        "links": {k: links[k] for k in keys if k in links},
        "compareColumns": ["key", "predicted", "other_predicted", "decision_changed", "spearman", "inside_change"],
        "compareRows": None if comparison is None else [
            [r.get(c) for c in ("key", "predicted", "other_predicted", "decision_changed", "spearman", "inside_change")]
            for r in comparison],
    })  # fmt: skip


def write_page(folder: Path, data: dict) -> Path:
    """The page's files and its data into ``folder``; returns the page's path."""
    from . import write_static

    for name in STATIC:
        write_static(folder, name)
    (folder / "insight-data.js").write_bytes(script("OCCLENS_INSIGHT", data))
    return folder / PAGE
