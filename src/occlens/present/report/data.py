"""What the report's pages read: one small data file per image and the index of all of them.

Both are JavaScript files that call a function of ``report.js`` with JSON (``OCCLENS.image(ID, {...})``,
``OCCLENS.index({...})``): a page loads them with ``<script src>``, which works from ``file://``, where
Chromium refuses ``fetch``. The δL grids travel quantised: 16 bits per window between the map's minimum
and maximum (``lo + q * (hi - lo) / 65535``, an error of at most ``(hi - lo) / 131070``), base64-coded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from ...core.records import Record, Summary

if TYPE_CHECKING:
    from ...core.result import OcclusionResult

LEVELS = 65535  # uint16


def script(call: str, *args: Any) -> bytes:
    """``call(arg, ...);`` with each argument as JSON (ASCII only: the file's encoding cannot matter)."""
    text = ", ".join(json.dumps(a, ensure_ascii=True, allow_nan=False, separators=(",", ":")) for a in args)
    return f"{call}({text});\n".encode("ascii")


def quantised(values: np.ndarray) -> dict:
    """A grid as ``{lo, hi, q}``: ``q`` the base64 of little-endian uint16 levels between ``lo`` and ``hi``."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    levels = np.zeros(values.shape, np.uint16) if hi == lo else np.rint((values - lo) / (hi - lo) * LEVELS)
    raw = levels.astype("<u2").tobytes()
    return {"lo": lo, "hi": hi, "q": base64.b64encode(raw).decode("ascii")}


def class_names(meta: dict) -> dict[int, str]:
    """The class names a result's ``meta`` knows (the predicted, true, explained and top-k classes)."""
    names: dict[int, str] = {}
    for t in meta.get("top_k") or ():
        names[int(t["class"])] = t["name"]
    return names


def image_data(result: OcclusionResult, record: Record, preview: str | None, figure: str | None) -> dict:
    """Everything an image page shows, from its :class:`~occlens.core.result.OcclusionResult` and manifest
    record; ``preview`` and ``figure`` are paths relative to ``report/`` (or None).

    A target beyond a class (``target_kind`` not ``"class"``; :mod:`occlens.core.result`) gives one map per
    sub-target, its role the sub-target's name, with ``targets``: per sub-target its name, clean loss ``L = -s``
    and what it is (``target_info``), its segment's outline (``outline``: ``{h, w, bits}``, the region's border
    pixels packed 8 to a byte, row by row, base64) or its box (``box``: x0 y0 x1 y1 in the model input's pixels).
    A model without class scores (a segmenter, a detector, a declared regression) has no Q, P or top classes:
    ``predicted``, ``confidence`` and ``probability`` are None, ``topK`` is empty."""
    meta, g, p = dict(result.meta), result.grid, result.probabilities
    classes = p is not None and result.predicted is not None  # the model returns class scores
    names = class_names(meta)
    for k, key in ((result.predicted, "predicted_name"), (result.label, "label_name"), (result.target, "target_name")):
        if isinstance(k, int) and meta.get(key) is not None:
            names[int(k)] = meta[key]
    for k, name in zip(result.true_labels or (), meta.get("true_label_names") or (), strict=False):
        names[int(k)] = name

    def named(k: int | str) -> list:
        return [k, None] if isinstance(k, str) else [int(k), names.get(int(k))]  # str: another kind of target

    def cls(k: int | str | None) -> list | None:
        return None if k is None else named(k)

    subs = result.target_kind != "class"
    if subs:  # every sub-target's map, each under its own name
        maps = [(role_of(result.target_kind, str(m.cls)), m) for m in result.target_maps]
    else:
        maps = [("predicted class Q" if result.target == result.predicted else "explained class", result.target_map)]
    if result.label_map is not None:
        maps.append(("true class K", result.label_map))
    threshold = result.settings.threshold
    for m in result.true_maps:
        if m.cls != result.target and p is not None:
            pm = float(p[m.cls])
            maps.append((f"true label ({'predicted' if pm > threshold else 'MISSED'}, p = {pm:.3f})", m))
    data = {
        "key": record.key,
        "path": record.path,
        "predicted": cls(result.predicted),
        "label": cls(result.label),
        "target": cls(result.target),
        "targetKind": result.target_kind,
        "targets": target_list(result) if subs else None,
        "correct": result.correct,
        "probability": float(p[result.target]) if p is not None and isinstance(result.target, int) else None,
        "confidence": float(p[result.predicted]) if p is not None and classes else None,
        "labelProbability": None if result.label is None or p is None else float(p[result.label]),
        "loss": result.loss,
        "topK": [[*named(c), q] for c, q in result.top_k(max(5, len(meta.get("top_k") or ())))],
        "grid": {
            "height": g.height,
            "width": g.width,
            "rows": g.rows,
            "cols": g.cols,
            "patch": list(g.patch)[-2:],  # a volume's windows in a slice (its depth: "volume")
            "stride": list(g.stride)[-2:],
        },
        "volume": volume_data(result),
        "fill": result.settings.to_dict().get("fill"),
        "model": meta.get("model"),
        "engine": result.engine,
        "seconds": record.seconds,
        "limit": max(float(np.abs(m.delta).max()) for _, m in maps) or 1.0,
        "maps": [{"role": role, "class": cls(m.cls), "loss": m.loss, **quantised(m.delta)} for role, m in maps],
        "multiLabel": None,
        "instead": None,
        "preview": preview,
        "figure": figure,
    }
    if result.true_labels is not None:
        data["multiLabel"] = {
            "threshold": threshold,
            "verdicts": [[*named(c), q, v] for c, q, v in result.verdicts()],
            "predicted": [cls(c) for c in result.predicted_labels],
        }
    if result.flip_map is not None and classes:
        data["instead"] = instead(result, named)
    return data


def volume_data(result: OcclusionResult) -> dict | None:
    """A volume's depth for the image page's slider and the card (None for a 2-D image): the planes of windows
    (``planes`` x ``rows`` x ``cols``: each map's δL in raster order, depth first), their depth ``patch`` and
    ``stride``, the ``card``'s depth (the centre of the most negative window: the gallery's slice) and the
    result's small preview of the volume (``{d, h, w, q}``: uint8, base64, depth first; None if it kept none)."""
    from ...core.grid import VolumeGrid
    from ..slices import worst_centre

    g = result.grid
    if not isinstance(g, VolumeGrid):
        return None
    p = result.preview
    preview = None if p is None else {
        "d": int(p.shape[0]), "h": int(p.shape[1]), "w": int(p.shape[2]),
        "q": base64.b64encode(np.ascontiguousarray(p, dtype=np.uint8).tobytes()).decode("ascii"),
    }  # fmt: skip
    return {"depth": g.depth, "planes": g.planes, "patch": g.patch[0], "stride": g.stride[0],
            "card": worst_centre(result)[0], "preview": preview}  # fmt: skip


def role_of(kind: str, name: str) -> str:
    """A sub-target's map's role on the image page: ``segment 'person'``, ``box 1 car [x0,y0,x1,y1]``, ``output 0``."""
    if kind == "segment":
        return f"segment {name!r}"
    if kind == "box":
        return f"box {name}"
    return name


def target_list(result: OcclusionResult) -> list[dict]:
    """Per sub-target of a target beyond a class: ``{name, loss, info}`` and, where the result holds them, its
    segment's ``outline`` or its ``box`` (see :func:`image_data`)."""
    info = result.target_info or ({},) * len(result.target_maps)
    regions = result.target_arrays.get("regions")
    boxes = result.target_arrays.get("boxes")
    out = []
    for t, (m, i) in enumerate(zip(result.target_maps, info, strict=True)):
        item: dict[str, Any] = {"name": str(m.cls), "loss": float(m.loss), "info": json_safe(dict(i))}
        if regions is not None and regions.ndim == 3 and t < len(regions):
            item["outline"] = outline(regions[t])
        if boxes is not None and boxes.ndim == 2 and t < len(boxes):
            item["box"] = [float(v) for v in boxes[t][:4]]
        out.append(item)
    return out


def outline(region: np.ndarray) -> dict:
    """A region's border: its pixels with a 4-neighbour outside it (or on the image's edge), packed 8 to a byte."""
    r = np.asarray(region, dtype=bool)
    inner = np.zeros_like(r)
    inner[1:-1, 1:-1] = r[1:-1, 1:-1] & r[:-2, 1:-1] & r[2:, 1:-1] & r[1:-1, :-2] & r[1:-1, 2:]
    border = r & ~inner
    return {"h": int(r.shape[0]), "w": int(r.shape[1]),
            "bits": base64.b64encode(np.packbits(border.ravel()).tobytes()).decode("ascii")}  # fmt: skip


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as plain numbers and lists, and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def instead(result: OcclusionResult, cls: Callable[[int | str], list]) -> dict:
    """The all-classes panel: per window, which class the model says when it is occluded, as one byte
    (0: still Q, 1..8: the most frequent other classes, 9: any other), and the legend."""
    from ..figure import INSTEAD_COLOURS, OTHER_COLOUR, SAME_COLOUR  # the figure's colours (matplotlib: only here)

    taken = result.instead(len(INSTEAD_COLOURS))
    code = {c: i + 1 for i, (c, _) in enumerate(taken)}
    flips = np.asarray(result.flip_map)
    codes = np.full(flips.shape, len(taken) + 1, np.uint8)
    codes[flips == result.predicted] = 0
    for c, i in code.items():
        codes[flips == c] = i
    return {
        "flips": result.flips,
        "windows": result.windows,
        "classes": [[*cls(c), n, INSTEAD_COLOURS[i]] for i, (c, n) in enumerate(taken)],
        "rest": (result.flips or 0) - sum(n for _, n in taken),
        "same": SAME_COLOUR,
        "other": OTHER_COLOUR,
        "codes": base64.b64encode(codes.tobytes()).decode("ascii"),
    }


def index_data(
    entries: Sequence[tuple[Record, str, str | None]],
    summary: Summary,
    title: str,
    total: int | None,
    done: int,
    updated: str,
    unreadable: Sequence[tuple[str, str]] = (),
    stopped: bool = False,
) -> dict:
    """The gallery's data: one column per field (``entries``: (record, id, thumbnail) in run order; a
    multi-label run adds each image's true and predicted label lists), the class names, the summary's
    tables (per class, or per label; ``what``: for an image without a class Q, what its maps explain, in
    words, from its record), the run's progress (``stopped``: the run ended before its last
    image) and the images whose outputs could not be read (``unreadable``: (key, message))."""
    names: dict[str, str] = {}
    row = {}
    fields = ["id", "key", "thumb", "label", "pred", "correct", "conf", "loss", "what"]
    several = any(r.true_labels is not None for r, _, _ in entries)
    if several:  # a multi-label run: each image's true and predicted label lists (null: a single-label truth)
        fields += ["labels", "preds"]
    columns: dict[str, list] = {k: [] for k in fields}
    for c in summary.labels:
        names[str(c.cls)] = c.name
    for n, (r, ident, thumb) in enumerate(entries):
        row[r.key] = n
        columns["id"].append(ident)
        columns["key"].append(r.key)
        columns["thumb"].append(thumb)
        columns["label"].append(r.label)
        columns["pred"].append(r.predicted)
        columns["correct"].append(None if r.correct is None else int(r.correct))  # multi-label: all its labels
        assert r.loss is not None  # entries are done images (ok records)
        # a model without class scores has no Q and no P(Q): its record names what was explained instead
        columns["conf"].append(None if r.confidence is None else round(r.confidence, 6))
        columns["loss"].append(round(r.loss, 6))
        columns["what"].append(r.predicted_name if r.predicted is None else None)
        if several:
            columns["labels"].append(None if r.true_labels is None else list(r.true_labels))
            columns["preds"].append(None if r.predicted_labels is None else list(r.predicted_labels))
        if r.predicted is not None:
            names.setdefault(str(r.predicted), r.predicted_name or str(r.predicted))
        if r.label is not None:
            names.setdefault(str(r.label), r.label_name or str(r.label))
    return {
        "title": title,
        "updated": updated,
        "done": done,
        "total": total,
        "stopped": stopped,
        "images": summary.images,
        "explained": summary.explained,
        "labelled": summary.labelled,
        "correct": summary.correct,
        "failed": len(summary.failed),
        "names": names,
        "entries": columns,
        "mistakes": [row[r.key] for r in summary.mistakes if r.key in row],
        "classes": [[c.cls, c.name, c.images, c.correct, c.predicted] for c in summary.classes],
        "labels": [[c.cls, c.name, c.images, c.predicted, c.missed, c.false_alarms] for c in summary.labels],
        "failures": [[r.key, r.error or ""] for r in summary.failed],
        "unreadable": [list(u) for u in unreadable],
    }


def image_link(images: str, stem: str, suffix: str) -> str:
    """An image's file ``STEM.SUFFIX`` as a link from ``report/``; ``images``: the folder of the files as a
    POSIX path relative to ``report/`` (a run's: ``../images``)."""
    return quote(images) + "/" + quote(stem) + suffix
