"""``occlens insight RUN_DIR``: what a model looks at across a dataset, from a run's stored maps (no forward pass).

It reads a run's folder as it is (the manifest read-only, without its lock: a run still going is read as far
as it got) and every explained image's stored δL grid, and finds:

- **per class** (the images whose true class is K where the run is labelled, each with its map of K where
  the run stored one, else its explained map; unlabelled: those predicted Q) the mean δL map and its
  spread (the per-window standard deviation), and where the negative mass lies (:mod:`occlens.analysis.localisation`:
  on the border, spread out, on the object where ground truth is given); each frequent **confusion**
  K -> Q (``confusions`` images or more) the same, over the maps of Q;
- **strategies**: each class's (and confusion's) maps clustered and ranked, most unusual first
  (:mod:`occlens.analysis.strategies`), each cluster its mean map and most typical images;
- with **ground truth** (:mod:`occlens.app.truth`) per image the share of negative mass inside the object, the
  pointing game and the IoU of the thresholded map, and per class their means with bootstrap 95% intervals;
- with **compare** (another run over the same image keys) per image the Spearman correlation of the two
  maps, whether the decision changed and the change of mass inside the object; per class their summaries.

Maps on another grid than the run's most common one (another input size or window) are resampled to it:
their pixel map is resized by area to the common input size, then averaged over each common window.

Outputs, in ``out`` (default ``RUN_DIR/report/insight``), written whole or not at all (into a fresh folder,
then renamed into place): ``insight.json`` (everything, the maps as lists), ``maps.npz`` (every mean map,
exact), ``images.csv``, ``classes.csv``, ``clusters.csv`` (and ``compare.csv``), and the page
``insight.html`` (with ``insight.js``, ``insight.css``, ``colours.js`` and its data ``insight-data.js``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.checks import check_int, check_progress
from ..core.declare import declared, validate
from ..core.errors import ConfigError, OcclensError, option, shown
from ..core.records import Record
from .insight_export import EXPORTS

FOLDER = os.path.join("report", "insight")  # the default out, inside the run's report
MARK = "insight.json"  # an out folder holding this is one insight wrote (and may replace)
MAIN = "the main strategy"


def _export(value, name: str) -> str | None:
    if value is None or value in EXPORTS:
        return value
    raise ConfigError(f"{option(name)} must be one of {', '.join(EXPORTS)}, got {shown(value)}", option=name,
                      value=value, expected=" or ".join(EXPORTS))  # fmt: skip


def _path(value, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and str(os.fspath(value)).strip():
        return os.fspath(value)
    raise ConfigError(f"{option(name)} must be a path, got {shown(value)}", option=name, value=value,
                      expected="a path")  # fmt: skip


@dataclass(frozen=True)
class InsightOptions:
    """What ``occlens insight`` reads beside the run and how it summarises (see each field's help)."""

    boxes: str | None = declared(
        None, "ground-truth boxes: a COCO JSON file, a folder of Pascal VOC XML files, or a CSV with a key column "
        "(the run's image keys) and x0,y0,x1,y1 (photo pixels) and optionally class", _path, metavar="FILE",
    )  # fmt: skip
    masks: str | None = declared(
        None, "ground-truth masks: a CSV with key,mask columns, or a folder mirroring the dataset's layout "
        "(cat/001.png for cat/001.jpg); non-zero pixels are the object", _path, metavar="DIR_OR_CSV",
    )  # fmt: skip
    compare: str | None = declared(
        None, "the DIR of another run over the same images (another checkpoint or model): how maps and decisions "
        "changed", _path, metavar="OTHER_RUN_DIR",
    )  # fmt: skip
    out: str | None = declared(None, "output folder (default: RUN_DIR/report/insight)", _path, metavar="DIR")
    confusions: int = declared(
        2, "a confusion K -> Q gets its own view from this many images on", check_int(1), parse=int, metavar="N"
    )
    typical: int = declared(6, "typical images shown per cluster", check_int(1), parse=int, metavar="N")
    most: int = declared(
        2000, "images per class clustered at most (a seeded sample; the others join the nearest cluster)",
        check_int(4), parse=int, metavar="N",
    )  # fmt: skip
    bootstrap: int = declared(
        1000, "bootstrap resamples for the per-class 95%% intervals (0: none)", check_int(0), parse=int, metavar="N"
    )
    seed: int = declared(0, "seed of the clustering's sample and starts and of the bootstrap", check_int(0), parse=int)
    export: str | None = declared(
        None, "also export each image with its map to browse elsewhere: fiftyone (a dataset folder) or wandb (an "
        "offline W&B run); needs pip install \"occlens[export]\"", _export, choices=EXPORTS,
    )  # fmt: skip
    export_to: str | None = declared(
        None, "the folder --export writes (new or empty; default: RUN_DIR/insight-fiftyone or RUN_DIR/insight-wandb)",
        _path, metavar="DIR",
    )  # fmt: skip
    progress: bool | None = declared(None, "a progress bar (as occlens.run's)", check_progress, flag=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.export_to is not None and self.export is None:
            raise ConfigError("--export-to needs --export fiftyone or wandb (what to write there)", option="export_to")
        if self.boxes is not None and self.masks is not None:
            raise ConfigError("give boxes or masks, not both (--boxes FILE or --masks DIR_OR_CSV)", option="masks")


# --------------------------------------------------------------------------------------------------
# what insight returns


@dataclass(frozen=True)
class Cluster:
    """One strategy of a class: its images (the run's keys), mean δL grid (R x C, the common grid), most typical
    images (nearest the cluster's mean first) and unusualness (``1 - cos`` with the class's main strategy)."""

    images: tuple[str, ...]
    mean: np.ndarray = field(repr=False)
    typical: tuple[str, ...]
    unusualness: float
    main: bool


@dataclass(frozen=True)
class View:
    """A class (or a confusion K -> Q): its images, the mean and the spread (standard deviation) of their δL
    grids, the means of the per-image placement and localisation numbers, and its clusters, most unusual first."""

    name: str
    cls: int | None
    images: tuple[str, ...]
    mean: np.ndarray = field(repr=False)
    spread: np.ndarray = field(repr=False)
    numbers: dict = field(repr=False)  # metric -> (mean, low, high, n)
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True)
class Insight:
    """What :func:`insight` found and wrote. ``clusters[name]``: each class's clusters, most unusual first
    (``name`` as the run records it; "0".."N-1" where the model has none); ``classes`` and ``confusions``
    (``"K -> Q"``) their :class:`View`; ``images``: one row per image and view (the CSV's);
    ``compare``: per image rows of the comparison (or None)."""

    run: Path
    out: Path
    page: Path
    classes: dict[str, View]
    confusions: dict[str, View]
    images: list[dict] = field(repr=False)
    compare: list[dict] | None = field(default=None, repr=False)
    unreadable: tuple[tuple[str, str], ...] = ()
    grid: object = field(default=None, repr=False)
    exported: Path | None = None  # the folder --export wrote

    @property
    def clusters(self) -> dict[str, list[Cluster]]:
        return {name: list(v.clusters) for name, v in self.classes.items()}

    def __str__(self) -> str:
        lines = [f"insight of {self.run}: {len(self.classes)} classes, {len(self.confusions)} confusions"]
        for v in [*self.classes.values(), *self.confusions.values()]:
            n = len(v.clusters)
            line = f"  {v.name}: {len(v.images)} images, {n} {'strategy' if n == 1 else 'strategies'}"
            if n > 1:
                top = v.clusters[0]
                line += f"; the most unusual ({len(top.images)} images) {top.unusualness:.2f} unlike the rest"
            lines.append(line)
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} images unreadable (listed in insight.json)")
        lines.append(f"page: {self.page}")
        if self.exported is not None:
            lines.append(f"exported: {self.exported}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the entry point


def insight(
    run_dir: str | os.PathLike,
    *,
    boxes: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    confusions: int = 2,
    typical: int = 6,
    most: int = 2000,
    bootstrap: int = 1000,
    seed: int = 0,
    export: str | None = None,
    export_to: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Insight:
    """What the model looks at across the dataset of the run in ``run_dir``: ``occlens insight`` in Python.

    Reads the run's stored maps (no forward pass; a run still going is read as far as it got) and writes
    ``out`` (default ``RUN_DIR/report/insight``: the page ``insight.html``, ``insight.json``, ``maps.npz`` and the
    CSVs). ``boxes``/``masks``: ground truth (:mod:`occlens.app.truth`); ``compare``: the DIR of another run over
    the same images. The other keywords are the command's flags of the same names (``occlens insight --help``).
    Returns an :class:`Insight`: ``insight(...).clusters["cat"][0].images`` are the keys of the images whose maps
    are least like the class's main strategy.
    """
    from ..core.checks import check_path

    run_dir = check_path(run_dir, "run_dir", "the folder of an `occlens run` (its path)", "occlens.insight(RUN_DIR)")
    options = InsightOptions(boxes=_fspath(boxes), masks=_fspath(masks), compare=_fspath(compare),
                             out=_fspath(out), confusions=confusions, typical=typical, most=most,
                             bootstrap=bootstrap, seed=seed, export=export, export_to=_fspath(export_to),
                             progress=progress)  # fmt: skip
    return run_insight(run_dir, options)


def _fspath(path: str | os.PathLike | None) -> str | None:
    """A path argument as the str that :class:`InsightOptions` holds; anything else as it is, for its check to
    refuse in one line."""
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else path


def run_insight(run_dir: str | os.PathLike, options: InsightOptions) -> Insight:
    """:func:`insight` with its options as one :class:`InsightOptions` (the command's way)."""
    from ..core.progress import Bar
    from .truth import read_truth

    run = Path(run_dir)
    settings, records = read_run(run)
    if records and all(r.predicted is None for r in records):  # a segmenter's, a detector's run: maps per sub-target
        what = records[0].predicted_name or "other targets"
        raise ConfigError(f"{run}: insight groups maps by class, and this run's model gives no class (its maps "
                          f"explain {what}); open the run's report/index.html instead")  # fmt: skip
    out = Path(options.out) if options.out is not None else run / FOLDER
    check_out(out)
    exported, kind = None, options.export
    if kind is not None:
        from .insight_export import check_export_to, need

        need(kind)  # a missing extra refused before anything is written
        exported = Path(options.export_to) if options.export_to is not None else run / f"insight-{kind}"
        check_export_to(exported)
    other = None
    if options.compare is not None:
        other_settings, other_records = read_run(Path(options.compare))
        shared = {r.key for r in records} & {r.key for r in other_records}
        if not shared:
            raise ConfigError(f"compare: the runs {run} and {options.compare} share no explained images (their keys "
                              "differ); compare two runs over the same dataset")  # fmt: skip
        other = (Path(options.compare), other_settings, {r.key: r for r in other_records if r.key in shared})
    names = recorded_names(records)
    truth = read_truth(options.boxes, options.masks, [r.key for r in records], names)
    bar = Bar(options.progress, "images", "insight", len(records) + (len(other[2]) if other else 0))
    try:
        maps, unreadable = read_maps(run, records, bar)
        other_maps = read_maps(other[0], list(other[2].values()), bar)[0] if other else None
    finally:
        bar.close()
    if not maps:
        raise ConfigError(f"{run}: the run has no readable explained image yet; wait for it, or run `occlens run`")
    grid = common_grid([m.grid for m in maps.values()])
    found = analyse(maps, records, names, grid, truth, run_preprocess(settings), options)
    comparison = None
    if other is not None:
        assert other_maps is not None  # read above whenever there is another run
        comparison = compared(maps, other_maps, grid, records, truth, run_preprocess(settings), names,
                              recorded_names(list(other[2].values())))  # fmt: skip
    page = write_insight(out, run, records, names, grid, found, comparison, truth, unreadable, options)
    result = Insight(run, out, page, found["classes"], found["confusions"], found["rows"], comparison,
                     tuple(unreadable), grid, exported)  # fmt: skip
    if exported is not None and kind is not None:
        from .insight_export import export_insight

        export_insight(result, records, run_preprocess(settings), kind, exported, stored_maps)
    return result


# --------------------------------------------------------------------------------------------------
# reading a run


def read_run(folder: Path) -> tuple[dict, list[Record]]:
    """A run's settings and its explained images' records, from its manifest read-only (not locked)."""
    from .manifest import COLUMNS, FILE, to_record

    path = folder / FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: not the folder of an occlens run (no {FILE}); give the DIR of `occlens run`")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            have = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            columns = [c for c in COLUMNS if c in have]
            rows = db.execute(f"SELECT {', '.join(columns)} FROM images WHERE status = 'ok' ORDER BY key").fetchall()
            stored = db.execute("SELECT value FROM run WHERE name = 'settings'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as err:
        raise ConfigError(f"{path}: cannot read the run's manifest ({err})") from None
    return (json.loads(stored[0]) if stored else {}), [to_record(r, columns) for r in rows]


def recorded_names(records: Sequence[Record]) -> dict[int, str]:
    """Class index -> name, as the run recorded them (the true and predicted classes of its images)."""
    names: dict[int, str] = {}
    for r in records:
        if r.label is not None:
            names.setdefault(r.label, r.label_name or str(r.label))
        if r.predicted is not None:
            names.setdefault(r.predicted, r.predicted_name or str(r.predicted))
    return dict(sorted(names.items()))


def run_preprocess(settings: dict):
    """The run's resize-and-crop (:class:`occlens.models.preprocess.Preprocess`), or None where it recorded none."""
    from ..models.preprocess import Preprocess

    pre = (settings.get("model") or {}).get("preprocess")
    try:
        return Preprocess(**pre) if isinstance(pre, dict) else None
    except (TypeError, OcclensError):
        return None


@dataclass(frozen=True)
class Maps:
    """One image's stored maps: its grid, the explained class and its δL, and every class's δL it stored."""

    grid: object
    target: object
    predicted: int
    by_class: dict

    @property
    def explained(self) -> np.ndarray:
        """The explained target's δL: stored under its class, or under -1 for a target beyond a class."""
        delta = self.by_class.get(self.target, self.by_class.get(-1))
        assert delta is not None  # stored_maps always stores the explained map (first, under one of those keys)
        return delta


def read_maps(run: Path, records: Sequence[Record], bar) -> tuple[dict[str, Maps], list[tuple[str, str]]]:
    """Each record's stored maps (:func:`stored_maps`); those whose files are missing or damaged (deleted since,
    or a run still writing) are listed as (key, message), not used."""
    from .folders import IMAGES

    maps: dict[str, Maps] = {}
    unreadable: list[tuple[str, str]] = []
    grids: dict[tuple, object] = {}  # Grid by geometry (stored_maps' cache)
    for r in records:
        try:
            maps[r.key] = stored_maps(run / IMAGES / r.stem, grids)
        except OcclensError as err:
            unreadable.append((r.key, str(err)))
            bar.step(False)
            continue
        bar.step(True)
    return maps, unreadable


def stored_maps(stem: Path, grids: dict | None = None) -> Maps:
    """The δL grids a run stored for one image (``STEM.json`` and ``STEM.npz``, the compact form of
    :meth:`occlens.OcclusionResult.save`), read without building the whole result: its pixel maps, the top
    classes and the probabilities are not needed here. ``grids``: a cache of :class:`~occlens.Grid` by geometry."""
    from ..core import result as written
    from ..core.grid import Grid

    # the newest version core.result reads (the full and the compact form once had a version each)
    newest = max(getattr(written, "FORMAT_VERSION", 1), getattr(written, "COMPACT_VERSION", 0))
    js, npz = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
    try:
        d = json.loads(js.read_text())
        if d.get("format") != written.FORMAT or d.get("format_version", 1) > newest:
            raise ValueError(f"not an occlens result this occlens reads (format {d.get('format')!r}, version "
                             f"{d.get('format_version')!r}; upgrade occlens)")  # fmt: skip
        g = d["grid"]
        spec = (g["height"], g["width"], tuple(g["patch"]), tuple(g["stride"]))
        grid = None if grids is None else grids.get(spec)
        if grid is None:
            grid = Grid(*spec)
            if grids is not None:
                grids[spec] = grid
        classes = [("", d["target"])]
        if d.get("label_map") is not None:
            classes.append(("label_", d["label_map"]["class"]))
        classes += [(f"true{i}_", m["class"]) for i, m in enumerate(d.get("true_maps") or ())]
        by_class: dict = {}
        with np.load(npz) as z:
            for prefix, cls in classes:
                delta = np.asarray(z[f"{prefix}delta"], dtype=np.float64)
                if delta.shape != (grid.rows, grid.cols):
                    raise ValueError(f"its δL grid is {delta.shape}, not {(grid.rows, grid.cols)}")
                by_class.setdefault(cls if isinstance(cls, int) else -1, delta)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OcclensError(f"cannot read the stored maps {stem}.json and .npz ({err})") from None
    return Maps(grid, d["target"], d["predicted"], by_class)


def common_grid(grids: Sequence) -> object:
    """The grid most maps have (the first of those on ties)."""

    def spec(g):
        return (g.height, g.width, tuple(g.patch), tuple(g.stride))

    counts = Counter(spec(g) for g in grids)
    top = max(counts.values())
    return next(g for g in grids if counts[spec(g)] == top)


def on_grid(delta: np.ndarray, grid, common) -> np.ndarray:
    """A δL grid on ``grid`` as one on ``common``: the same grid as it is; else its pixel map resized by area to
    the common input size and averaged over each common window."""
    from ..analysis.strategies import resized

    if (grid.height, grid.width, tuple(grid.patch), tuple(grid.stride)) == (
        common.height, common.width, tuple(common.patch), tuple(common.stride)):  # fmt: skip
        return np.asarray(delta, dtype=np.float64)
    pixels = resized(grid.pixel_map(delta), common.height, common.width)
    (rs, re), (cs, ce) = common.row_spans(), common.col_spans()
    h, w = np.arange(common.height), np.arange(common.width)
    a = ((h >= rs[:, None]) & (h < re[:, None])).astype(np.float64)
    b = ((w >= cs[:, None]) & (w < ce[:, None])).astype(np.float64)
    return (a / a.sum(1, keepdims=True)) @ pixels @ (b / b.sum(1, keepdims=True)).T


# --------------------------------------------------------------------------------------------------
# the analysis


PLACEMENT = ("border", "spread")
LOCALISATION = ("inside", "pointing", "iou", "area")


def groups_of(record: Record) -> list[int | None]:
    """The classes whose view an image joins: its true classes where labelled, else its prediction (None for a
    model without class scores: one view of every image)."""
    if record.true_labels is not None:
        return list(record.true_labels)
    if record.label is not None:
        return [record.label]
    return [record.predicted]


def object_of(truth, key: str, cls: int | None, grid, preprocess, path: str) -> np.ndarray | None:
    """The image's object for class ``cls`` at the input geometry (H x W bool): its boxes of ``cls`` (all its
    boxes when none is of ``cls``), or its mask; None without ground truth for it."""
    from ..analysis.localisation import boxes_mask
    from .truth import boxes_on_input, mask_on_input, seen_region

    if truth is None or key not in truth:
        return None
    if truth.kind == "masks":
        return mask_on_input(truth.masks[key], preprocess, grid.height, grid.width)
    boxes = truth.boxes[key]
    chosen = [b for b in boxes if b.cls == cls] or list(boxes)
    size = truth.sizes.get(key) or photo_size(path)
    if size is None:
        return None
    region = seen_region(preprocess, *size)
    return boxes_mask(boxes_on_input(chosen, region, grid.height, grid.width), grid.height, grid.width)


def photo_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def name_of(names: dict[int, str], cls: int | None) -> str:
    """A class's name, else its number as text ("None" for no class: a model without class scores)."""
    return str(cls) if cls is None else names.get(cls, str(cls))


def analyse(maps: dict[str, Maps], records: Sequence[Record], names: dict[int, str], grid, truth, preprocess,
            options: InsightOptions) -> dict:  # fmt: skip
    from ..analysis.localisation import Cells, localisation, placement
    from ..analysis.strategies import features

    members: dict[int | None, list[tuple[str, np.ndarray]]] = {}  # None: a model without class scores
    confused: dict[tuple[int, int | None], list[tuple[str, np.ndarray]]] = {}
    rows, cells = [], Cells.of(grid)
    by_key = {r.key: r for r in records}
    for r in records:
        m = maps.get(r.key)
        if m is None:
            continue
        explained = on_grid(m.explained, m.grid, grid)
        for c in groups_of(r):
            delta = on_grid(m.by_class[c], m.grid, grid) if c in m.by_class else explained
            members.setdefault(c, []).append((r.key, delta))
        if r.label is not None and r.true_labels is None and r.label != r.predicted:
            confused.setdefault((r.label, r.predicted), []).append((r.key, explained))
    views: dict[str, dict] = {}
    for c, items in sorted(members.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        views["all images" if c is None else names.get(c, str(c))] = {"cls": c, "items": items, "kind": "class"}
    for (k, q), items in sorted(confused.items()):
        if len(items) >= options.confusions:
            views[f"{names.get(k, str(k))} -> {name_of(names, q)}"] = {"cls": q, "items": items, "kind": "confusion",
                                                                          "true": k}  # fmt: skip
    for v in views.values():
        v["features"] = features([d for _, d in v["items"]])
    sums = {v["cls"]: v["features"].sum(0) for v in views.values() if v["kind"] == "class"}
    classes: dict[str, View] = {}
    confusions: dict[str, View] = {}
    for name, v in views.items():
        # where the model looks for the other classes: what ranks two equally unusual strategies (rank_clusters)
        others = [total for c, total in sums.items() if c != v["cls"]]
        v["elsewhere"] = np.sum(others, axis=0) if others else None
        per_image = {}
        for key, delta in v["items"]:
            values = cells.values(delta)
            numbers = placement(cells, values)
            true = v["cls"] if v["kind"] == "class" else v["true"]
            obj = object_of(truth, key, true, grid, preprocess, by_key[key].path)
            if obj is not None:
                numbers |= localisation(cells, values, delta, obj)
            per_image[key] = numbers
        view, ranks = summarise(name, v, per_image, options)
        (classes if v["kind"] == "class" else confusions)[name] = view
        for key, _ in v["items"]:
            r = by_key[key]
            row = {"key": key, "view": name, "kind": v["kind"], "label": None if r.label is None else names[r.label],
                   "predicted": name_of(names, r.predicted), "correct": r.correct, "cluster": ranks[key],
                   "unusualness": view.clusters[ranks[key]].unusualness}  # fmt: skip
            rows.append(row | {k: per_image[key].get(k) for k in (*PLACEMENT, *LOCALISATION)})
    return {"classes": classes, "confusions": confusions, "rows": rows}


def summarise(name: str, v: dict, per_image: dict, options: InsightOptions) -> tuple[View, dict[str, int]]:
    """A view from its images' grids and numbers; and each image's cluster (its rank, 0 = most unusual)."""
    from ..analysis.localisation import mean_interval
    from ..analysis.strategies import rank_clusters, spectral_clusters

    keys = [k for k, _ in v["items"]]
    stack = np.stack([d for _, d in v["items"]])
    x = v["features"]
    labels = spectral_clusters(x, seed=options.seed, most=options.most)
    ranked = rank_clusters(x, labels, options.typical, v["elsewhere"])
    clusters, ranks = [], {}
    for i, rc in enumerate(ranked):
        for j in rc.members:
            ranks[keys[j]] = i
        clusters.append(Cluster(tuple(keys[j] for j in rc.members), stack[rc.members].mean(0),
                                tuple(keys[j] for j in rc.typical), rc.unusualness, rc.main))  # fmt: skip
    numbers = {}
    for metric in (*PLACEMENT, *LOCALISATION):
        values = [per_image[k].get(metric) for k in keys]
        if any(value is not None for value in values):
            numbers[metric] = mean_interval(values, options.bootstrap, options.seed)
    view = View(name, v["cls"], tuple(keys), stack.mean(0), stack.std(0), numbers, tuple(clusters))
    return view, ranks


def compared(maps: dict[str, Maps], other: dict[str, Maps], grid, records: Sequence[Record], truth, preprocess,
             names: dict[int, str], other_names: dict[int, str]) -> list[dict]:  # fmt: skip
    """Per image in both runs: the Spearman correlation of the explained maps (on the common grid), the two
    decisions (each in its run's class names) and whether they differ, and (with ground truth) the change of the
    negative mass inside the object (of the image's true class where labelled, else of this run's prediction)."""
    from ..analysis.localisation import Cells, localisation
    from ..analysis.similarity import spearman

    cells, by_key, rows = Cells.of(grid), {r.key: r for r in records}, []
    for key in sorted(set(maps) & set(other)):
        a, b = maps[key], other[key]
        da = on_grid(a.explained, a.grid, grid)
        db = on_grid(b.explained, b.grid, grid)
        said, other_said = names.get(a.predicted, str(a.predicted)), other_names.get(b.predicted, str(b.predicted))
        row = {
            "key": key,
            "predicted": said,
            "other_predicted": other_said,
            "decision_changed": said != other_said,
            "spearman": spearman(da, db),
        }
        r = by_key[key]
        obj = object_of(truth, key, groups_of(r)[0], grid, preprocess, r.path)
        if obj is not None:
            inside = [localisation(cells, cells.values(d), d, obj)["inside"] for d in (da, db)]
            row["inside_change"] = inside[1] - inside[0]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# writing


def check_out(out: Path) -> None:
    """``out`` may be written: it does not exist, is empty, or holds an earlier insight (replaced whole)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARK).is_file():
        raise ConfigError(f"--out {out} holds other files than an earlier insight's; give an empty or new folder")


def _csv(rows: list[dict], columns: Sequence[str] | None = None) -> bytes:
    columns = list(columns or (rows[0].keys() if rows else []))
    text = io.StringIO()
    w = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(row.get(k)) for k in columns})
    return text.getvalue().encode()


def _cell(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def view_json(v: View, kind: str, n: int) -> dict:
    """A view in ``insight.json``: its grids named by their arrays in ``maps.npz`` (``view{n}_mean`` ...)."""
    return {
        "name": v.name, "kind": kind, "class": v.cls, "images": len(v.images),
        "mean": f"view{n}_mean", "spread": f"view{n}_spread",
        "numbers": {k: [_finite(x) for x in t] for k, t in v.numbers.items()},
        "clusters": [{"images": list(c.images), "typical": list(c.typical), "unusualness": round(c.unusualness, 6),
                      "main": c.main, "mean": f"view{n}_cluster{i}_mean"} for i, c in enumerate(v.clusters)],
    }  # fmt: skip


def write_insight(out: Path, run: Path, records: Sequence[Record], names: dict[int, str], grid, found: dict,
                  comparison: list[dict] | None, truth, unreadable, options: InsightOptions) -> Path:  # fmt: skip
    """Every output into a fresh folder beside ``out``, then renamed into place (an earlier insight replaced)."""
    from ..present.report.insight import page_data, write_page

    views = [(v, "class") for v in found["classes"].values()] + [(v, "confusion") for v in found["confusions"].values()]
    summary = {
        "run": str(run), "images": len({r["key"] for r in found["rows"]}), "unreadable": [list(u) for u in unreadable],
        "grid": {"height": grid.height, "width": grid.width, "patch": list(grid.patch), "stride": list(grid.stride)},
        "truth": None if truth is None else {
            "source": truth.source, "kind": truth.kind, "images": len(truth.keys), "unmatched": truth.unmatched,
            "other_categories": list(truth.other_categories)},
        "views": [view_json(v, kind, n) for n, (v, kind) in enumerate(views)],
        "compare": None if comparison is None else {"run": str(options.compare), "images": len(comparison)},
    }  # fmt: skip
    arrays = {}
    for n, (v, _) in enumerate(views):
        arrays[f"view{n}_mean"], arrays[f"view{n}_spread"] = v.mean, v.spread
        for i, c in enumerate(v.clusters):
            arrays[f"view{n}_cluster{i}_mean"] = c.mean
    class_rows = []
    for v, kind in views:
        row = {"view": v.name, "kind": kind, "images": len(v.images), "strategies": len(v.clusters)}
        for metric, (mean, low, high, count) in v.numbers.items():
            row |= {metric: mean, f"{metric}_low": low, f"{metric}_high": high, f"{metric}_n": count}
        class_rows.append(row)
    metrics = [m for m in (*PLACEMENT, *LOCALISATION) if any(m in r for r in class_rows)]
    class_columns = ["view", "kind", "images", "strategies"] + [
        f"{m}{s}" for m in metrics for s in ("", "_low", "_high", "_n")]  # fmt: skip
    cluster_rows = [{"view": v.name, "rank": i, "images": len(c.images), "unusualness": c.unusualness, "main": c.main,
                     "typical": " ".join(c.typical)} for v, _ in views for i, c in enumerate(v.clusters)]  # fmt: skip
    image_columns = ["key", "view", "kind", "label", "predicted", "correct", "cluster", "unusualness", *PLACEMENT]
    if truth is not None:
        image_columns += list(LOCALISATION)
    by_key = {r.key: r for r in records}
    data = page_data(summary, arrays, found["rows"], comparison, by_key, run, out, image_columns)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        rows = [{k: _finite(v) for k, v in r.items()} for r in found["rows"]]
        compare_rows = None if comparison is None else [{k: _finite(v) for k, v in r.items()} for r in comparison]
        everything = {**summary, "rows": rows, "compare_rows": compare_rows}
        (stage / MARK).write_text(json.dumps(everything, allow_nan=False, default=_default))
        with open(stage / "maps.npz", "wb") as f:
            np.savez(f, **arrays)
        (stage / "images.csv").write_bytes(_csv(found["rows"], image_columns))
        (stage / "classes.csv").write_bytes(_csv(class_rows, class_columns))
        (stage / "clusters.csv").write_bytes(_csv(cluster_rows))
        if comparison is not None:
            (stage / "compare.csv").write_bytes(
                _csv(
                    comparison, ["key", "predicted", "other_predicted", "decision_changed", "spearman", "inside_change"]
                )
            )
        page = write_page(stage, data)
        os.chmod(stage, 0o777 & ~_umask())
        replace_folder(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out / page.name


def _default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"not JSON: {type(v).__name__}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(out: Path) -> None:
    """What an insight killed while it wrote left beside ``out``: its fresh folder (``.NAME.xxxx.part``) or the
    earlier one moved aside (``.NAME.xxxx.old``), put back when ``out`` is missing."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if path.is_dir() and path.name.endswith(".old") and not out.exists() and (path / "x" / MARK).is_file():
            os.replace(path / "x", out)  # killed between moving the earlier insight aside and putting the new one
        if path.is_dir() and path.name.endswith((".part", ".old")):
            shutil.rmtree(path, ignore_errors=True)


def replace_folder(stage: Path, out: Path) -> None:
    """``stage`` renamed to ``out``; an earlier ``out`` moved aside first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "x")
    try:
        os.replace(stage, out)
    except BaseException:
        if old is not None:
            os.replace(old / "x", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
