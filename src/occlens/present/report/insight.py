"""The insight page (``occlens insight``): ``insight.html`` with ``insight.js``, ``insight.css``, ``colours.js`` and
its data ``insight-data.js`` (``OCCLENS_INSIGHT({...})``, loaded with ``<script src>``: it works from ``file://``,
nothing from a CDN; the grids travel quantised as the report's, :func:`~.data.quantised`). Per class and confusion
the mean δL map and its spread, the strategies (each its mean map and typical images, most unusual first), the per-
class numbers with their intervals, and one sortable table of every image (the worst-localised one click away),
each row linked to the run's image page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data import image_link, quantised, script

STATIC = ("insight.html", "insight.js", "insight.css", "colours.js")
PAGE = "insight.html"
# What the run's report (its index.html, one folder up) opens in a hidden frame to learn that this page exists
# and show its link: present.js tells the report so (no inline script; a missing file leaves the link hidden).
PRESENT = {
    "present.html": '<!doctype html>\n<meta charset="utf-8">\n<title>occlens insight</title>\n'
    '<script src="present.js"></script>\n',
    "present.js": 'if (window.parent !== window) window.parent.postMessage("occlens-insight", "*");\n',
}


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


def _scalar(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value.item() if hasattr(value, "item") else value


def _grid(values) -> dict:
    """A grid as the page reads it: its shape and :func:`~occlens.present.report.data.quantised` values."""
    a = np.asarray(values, dtype=np.float64)
    return {"rows": a.shape[0], "cols": a.shape[1], **quantised(a)}


def page_data(summary: dict, grids: dict, rows: Sequence[dict], comparison, records: dict, run: Path, out: Path,
              columns: Sequence[str]) -> dict:  # fmt: skip
    """What the page shows: the summary's views (their grids, named in ``grids``, quantised; each cluster its size,
    typical images and mean) and the image rows, each key with the links (relative to ``out``) to the run's preview
    ``images/STEM.jpg`` and its image page ``report/image.html#id=ID``."""
    from . import FOLDER, image_id

    images = Path(os.path.relpath(Path(run).absolute() / "images", Path(out).absolute())).as_posix()
    report = Path(os.path.relpath(Path(run).absolute() / FOLDER, Path(out).absolute())).as_posix()
    keys = {r["key"] for r in rows} | {r["key"] for r in comparison or ()}
    links = {k: [image_link(images, records[k].stem, ".jpg"), f"{report}/image.html#id={image_id(records[k])}"]
             for k in sorted(keys) if k in records}  # fmt: skip
    views = [{**v, "mean": _grid(grids[v["mean"]]), "spread": _grid(grids[v["spread"]]), "clusters": [
        {"size": len(c["images"]), "typical": c["typical"], "unusualness": c["unusualness"], "main": c["main"],
         "mean": _grid(grids[c["mean"]])} for c in v["clusters"]]} for v in summary["views"]]  # fmt: skip
    compare = ["key", "predicted", "other_predicted", "decision_changed", "spearman", "inside_change"]
    return {
        **_clean({k: v for k, v in summary.items() if k != "views"}),
        "views": _clean(views),
        "columns": list(columns),
        "rows": [[_scalar(r.get(c)) for c in columns] for r in rows],
        "links": links,
        "compareColumns": compare,
        "compareRows": None if comparison is None else [[_scalar(r.get(c)) for c in compare] for r in comparison],
    }


def write_page(folder: Path, data: dict) -> Path:
    """The page's files and its data into ``folder``; returns the page's path."""
    from . import write_static

    for name in STATIC:
        write_static(folder, name)
    (folder / "insight-data.js").write_bytes(script("OCCLENS_INSIGHT", data))
    for name, text in PRESENT.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder / PAGE
