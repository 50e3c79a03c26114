"""HTML for the report: the gallery page and one page per image. Every text is escaped; nothing is fetched."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from .assets import CSS, JS

SIGN = (
    "δL = L − L_occl per window. Red (δL < 0): occluding the window raised the loss, so the region supported "
    "the class. Blue (δL > 0): the region argued against it."
)


@dataclass(frozen=True)
class Entry:
    """One explained image as the report shows it: its manifest record, its result JSON, its links."""

    record: Any  # occlens.app.manifest.Record
    data: dict  # the image's STEM.json
    page: str  # pages/NNNNN.html, relative to report/
    thumb: str | None  # thumbs/HASH.jpg, relative to report/
    figure: str  # the figure PNG, relative to report/pages/


def document(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n{script}</body>\n</html>\n"
    )


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def class_text(k: int | None, name: str | None) -> str:
    return "-" if k is None else f"{k} {name}" if name is not None else str(k)


# --------------------------------------------------------------------------------------------------
# the gallery


def index_page(title: str, entries: Sequence[Entry], summary) -> str:
    """The gallery: summary, filters, thumbnails, mistakes, per-class counts, failures."""
    acc = "-" if summary.accuracy is None else f"{summary.correct}/{summary.labelled} = {100 * summary.accuracy:.1f}%"
    stats = (
        f'<p class="stats" id="stats"><b>{summary.images}</b> images · <b>{summary.explained}</b> explained · '
        f"<b>{len(summary.failed)}</b> failed · accuracy <b>{escape(acc)}</b> · "
        f"<b>{summary.labelled - summary.correct}</b> mistakes</p>"
    )
    controls = f"""
<section id="controls">
<label>Show <select id="f-correct"><option value="all">all</option><option value="correct">correct</option>
<option value="incorrect">incorrect</option><option value="unlabelled">unlabelled</option></select></label>
<label>True class <select id="f-true"><option value="">any</option></select></label>
<label>Predicted class <select id="f-pred"><option value="">any</option></select></label>
<label>Confidence P(Q) from <input id="f-min" type="number" min="0" max="1" step="0.01" value="0">
to <input id="f-max" type="number" min="0" max="1" step="0.01" value="1"></label>
<label>Sort <select id="f-sort"><option value="conf-desc">confidence, high first</option>
<option value="conf-asc">confidence, low first</option><option value="loss-desc">loss L, high first</option>
<option value="name">image name</option><option value="true">true class</option>
<option value="pred">predicted class</option></select></label>
<span id="count">{len(entries)} of {len(entries)} images</span>
</section>
<noscript><p>The filters need JavaScript; every image is listed in the tables below.</p></noscript>
<main id="gallery"></main>"""
    pages = {e.record.key: e.page for e in entries}
    body = [f"<h1>{escape(title)}</h1>", stats, controls, mistakes_table(summary, pages)]
    body += [classes_table(summary), failures_table(summary), all_images_list(entries)]
    rows = [gallery_row(e) for e in entries]
    data = json.dumps(rows, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    script = f'<script type="application/json" id="data">{data}</script>\n<script>{JS}</script>\n'
    return document(title, "\n".join(body), script)


def gallery_row(e: Entry) -> dict:
    r = e.record
    return {
        "key": r.key,
        "page": e.page,
        "thumb": e.thumb,
        "label": r.label,
        "labelName": r.label_name,
        "pred": r.predicted,
        "predName": r.predicted_name,
        "conf": round(r.confidence, 6),
        "loss": round(r.loss, 6),
        "correct": r.correct,
    }


def mistakes_table(summary, pages: dict[str, str]) -> str:
    if not summary.mistakes:
        return ""
    rows = "".join(
        f'<tr><td class="num">{r.confidence:.3f}</td><td><a href="{escape(pages[r.key])}">{escape(r.key)}</a></td>'
        f"<td>{escape(class_text(r.predicted, r.predicted_name))}</td><td>{escape(class_text(r.label, r.label_name))}"
        f"</td></tr>"
        for r in summary.mistakes
    )
    return (
        '<h2>Most confident mistakes</h2>\n<table id="mistakes"><tr><th class="num">P(Q)</th><th>image</th>'
        f"<th>predicted Q</th><th>true K</th></tr>{rows}</table>"
    )


def classes_table(summary) -> str:
    if not summary.classes:
        return ""
    rows = "".join(
        f'<tr><td><a href="#true={c.cls}">{escape(class_text(c.cls, c.name))}</a></td><td class="num">{c.images}</td>'
        f'<td class="num">{c.correct}</td><td class="num">{percent(c.correct, c.images)}</td>'
        f'<td class="num"><a href="#pred={c.cls}">{c.predicted}</a></td></tr>'
        for c in summary.classes
    )
    return (
        '<h2>Per class</h2>\n<table id="classes"><tr><th>class</th><th class="num">images (true K)</th>'
        '<th class="num">correct</th><th class="num">accuracy</th><th class="num">predicted as Q</th></tr>'
        f"{rows}</table>"
    )


def failures_table(summary) -> str:
    if not summary.failed:
        return ""
    rows = "".join(f"<tr><td>{escape(r.key)}</td><td>{escape(r.error or '')}</td></tr>" for r in summary.failed)
    return (
        f"<h2>Failed ({len(summary.failed)})</h2>\n"
        f'<table id="failures"><tr><th>image</th><th>error</th></tr>{rows}</table>'
    )


def all_images_list(entries: Sequence[Entry]) -> str:
    items = "".join(f'<li><a href="{escape(e.page)}">{escape(e.record.key)}</a></li>' for e in entries)
    return f"<details><summary>All explained images as a list</summary><ul>{items}</ul></details>"


# --------------------------------------------------------------------------------------------------
# a page per image


def image_page(entry: Entry, previous: Entry | None, following: Entry | None, colormap) -> str:
    """The figure, the verdict, both maps when K differs from the explained class, top-k and the numbers."""
    r, d = entry.record, entry.data
    meta = d.get("meta", {})
    nav = ['<a href="../index.html">← gallery</a>']
    if previous is not None:
        nav.append(f'<a href="../{escape(previous.page)}" rel="prev">← previous</a>')
    if following is not None:
        nav.append(f'<a href="../{escape(following.page)}" rel="next">next →</a>')
    q = class_text(r.predicted, r.predicted_name)
    verdict = f"predicted Q = {q} (P = {r.confidence:.3f})"
    css = "unknown"
    if r.label is not None:
        css = "right" if r.correct else "wrong"
        verdict = (
            f"{'correct' if r.correct else 'INCORRECT'}: {verdict} · true K = {class_text(r.label, r.label_name)} "
            f"(P = {r.label_probability:.3f})"
        )
    maps = class_maps(d, r)
    limit = max((max(abs(v) for row in m[2] for v in row) for m in maps), default=0.0) or 1.0
    panels = "".join(map_panel(role, k, grid, limit, colormap) for role, k, grid in maps)
    body = f"""<nav>{" ".join(nav)}</nav>
<h1>{escape(r.key)}</h1>
<p class="verdict {css}">{escape(verdict)}</p>
<img class="figure" src="{escape(entry.figure)}" alt="occlusion figure of {escape(r.key)}">
<h2>Maps</h2>
<section class="maps">{panels}</section>
<p class="legend">{escape(SIGN)}</p>
<h2>Top {len(meta.get("top_k", []))} classes</h2>
{top_k_table(meta.get("top_k", []), r)}
<h2>Numbers</h2>
{facts_table(d, r)}
{"".join(numbers_table(role, k, grid) for role, k, grid in maps)}"""
    return document(f"{r.key} · occlens", body)


def class_maps(d: dict, r) -> list[tuple[str, str, list[list[float]]]]:
    """(role, class text, δL grid) for the explained class and, when present, the true class K."""
    meta = d.get("meta", {})
    target = class_text(d["target"], meta.get("target_name"))
    role = "predicted class Q" if d["target"] == d["predicted"] else "explained class"
    maps = [(role, target, d["delta"])]
    if d.get("label_map") is not None:
        maps.append(("true class K", class_text(d["label_map"]["class"], r.label_name), d["label_map"]["delta"]))
    return maps


def map_panel(role: str, k: str, grid: list[list[float]], limit: float, colormap) -> str:
    rows, cols = len(grid), len(grid[0])
    cell = max(6, min(40, 360 // max(rows, cols)))
    rects = []
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            fill = colour(v, limit, colormap)
            rects.append(
                f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}" fill="{fill}">'
                f"<title>window ({i}, {j}): δL = {v:.4f}</title></rect>"
            )
    w, h = cols * cell, rows * cell
    ramp = ", ".join(colour(limit * t, limit, colormap) for t in (-1, -0.5, 0, 0.5, 1))
    return (
        f'<figure class="map-panel" data-role="{escape(role)}"><figcaption>{escape(role)}: {escape(k)}</figcaption>'
        f'<svg class="map" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="δL per window for {escape(k)}">{"".join(rects)}</svg>'
        f'<div class="colorbar">{-limit:.3g} <span class="ramp" style="background: linear-gradient(to right, {ramp})">'
        f"</span> {limit:.3g}</div></figure>"
    )


def colour(value: float, limit: float, colormap) -> str:
    """The figure's colours (RdBu from -limit to +limit) as #rrggbb."""
    r, g, b, _ = colormap(min(max((value / limit + 1) / 2, 0.0), 1.0))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def top_k_table(top_k: list[dict], r) -> str:
    rows = []
    for n, t in enumerate(top_k, start=1):
        mark = " (Q)" if t["class"] == r.predicted else ""
        mark += " (K)" if t["class"] == r.label else ""
        rows.append(
            f'<tr><td class="num">{n}</td><td>{escape(class_text(t["class"], t["name"]))}{mark}</td>'
            f'<td class="num">{t["probability"]:.4f}</td></tr>'
        )
    head = '<tr><th class="num">#</th><th>class</th><th class="num">P</th></tr>'
    return f'<table class="topk">{head}{"".join(rows)}</table>'


def facts_table(d: dict, r) -> str:
    g, s, meta = d["grid"], d["settings"], d.get("meta", {})
    lm = d.get("label_map")
    delta = [v for row in d["delta"] for v in row]
    facts = [
        ("image", r.path),
        ("true class K", class_text(r.label, r.label_name)),
        ("predicted class Q", class_text(r.predicted, r.predicted_name)),
        ("P(Q)", f"{r.confidence:.6f}"),
        ("P(K)", "-" if r.label_probability is None else f"{r.label_probability:.6f}"),
        ("explained class", class_text(d["target"], meta.get("target_name"))),
        ("L = −log P(explained class)", f"{d['loss']:.6f}"),
        ("min / max δL", f"{min(delta):.6f} / {max(delta):.6f}"),
    ]
    if lm is not None:
        flat = [v for row in lm["delta"] for v in row]
        facts += [("L of K", f"{lm['loss']:.6f}"), ("min / max δL of K", f"{min(flat):.6f} / {max(flat):.6f}")]
    facts += [
        ("image size", f"{g['height']} x {g['width']}"),
        ("windows", f"{g['rows']} x {g['cols']} of {g['patch'][0]} x {g['patch'][1]}, stride "
                    f"{g['stride'][0]} x {g['stride'][1]}"),
        ("fill", json.dumps(s.get("fill"))),
        ("model", str(meta.get("model", "-"))),
        ("seconds", f"{r.seconds:.3f}"),
    ]  # fmt: skip
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def numbers_table(role: str, k: str, grid: list[list[float]]) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{v:.4f}</td>" for v in row) + "</tr>" for row in grid)
    return (
        f"<details><summary>δL per window for the {escape(role)} {escape(k)} (row by row from the top left)"
        f'</summary><table class="grid">{rows}</table></details>'
    )
