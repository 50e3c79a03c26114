"""``occlens insight --export fiftyone|wandb --export-to DIR``: an insight's images, each with its δL map, to
browse in FiftyOne or Weights & Biases (optional extras: ``pip install "occlens[export]"``).

Per image of the insight (its views' order, each image once): the photo, its true class(es) and prediction as
labels, the δL map of the class of its first view (its true class where labelled, else its prediction: the map
the insight used) at the model's input geometry, its strategy (the cluster's rank in that view, 0 most unusual)
and unusualness, and with ground truth ``inside`` and ``pointing``.

- **fiftyone**: a dataset in FiftyOne's own folder format (``fo.types.LegacyFiftyOneDataset``: ``metadata.json``,
  ``samples.json``, the heatmaps under ``fields/``), read back with ``fo.Dataset.from_dir(DIR,
  dataset_type=fo.types.LegacyFiftyOneDataset)``. The map is a ``fo.Heatmap`` with the symmetric range
  ``[-max|δL|, +max|δL|]`` of its image (0 in the middle of the colour scale); labels are ``fo.Classification``
  (``fo.Classifications`` for a multi-label truth).
- **wandb**: an offline W&B run in DIR (``wandb.init(mode="offline", dir=DIR)``, synced later with ``wandb sync``)
  holding the table ``insight``: one row per image with the photo, its map over the photo (red supported the
  class, blue argued against it, as the report draws it) and the numbers.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError

EXPORTS = ("fiftyone", "wandb")  # --export's choices (app.insight declares the option with them)

PIP = {"fiftyone": "fiftyone", "wandb": "wandb"}


def exported_samples(found, records, preprocess, read) -> list[dict]:
    """One entry per image of the insight ``found``: its record, view, cluster, numbers and the δL pixel map at the
    model's input geometry (H x W float64) of its first view's class; ``read``: app.insight.stored_maps (passed
    in: the insight imports this module, not the other way round)."""
    from .folders import IMAGES

    by_key = {r.key: r for r in records}
    first: dict[str, dict] = {}
    for row in found.images:
        if row["kind"] == "class" and row["key"] in by_key:
            first.setdefault(row["key"], row)
    views = {**found.classes, **found.confusions}
    names = {v.cls: v.name for v in found.classes.values()}
    samples = []
    for key, row in first.items():
        r = by_key[key]
        m = read(found.run / IMAGES / r.stem)
        grid: Any = m.grid
        cls = views[row["view"]].cls
        delta = m.by_class.get(cls if cls is not None else -1, m.by_class.get(m.target))
        if delta is None:
            delta = next(iter(m.by_class.values()))
        true = [names.get(c, str(c)) for c in r.true_labels] if r.true_labels is not None else (
            [r.label_name or str(r.label)] if r.label is not None else [])  # fmt: skip
        samples.append({
            "record": r, "row": row, "pixels": grid.pixel_map(delta), "true": true,
            "predicted": None if r.predicted is None else (r.predicted_name or str(r.predicted)),
            "photo": photo_of(found.run, r),
        })  # fmt: skip
    return samples


def photo_of(run: Path, record) -> Path | None:
    """The image's photo: its path as recorded, else the run's preview ``images/STEM.jpg``; None where neither is."""
    from .folders import IMAGES

    for path in (Path(record.path), run / IMAGES / f"{record.stem}.jpg"):
        if path.is_file():
            return path.absolute()
    return None


def _number(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def overlay(photo: Path | None, pixels: np.ndarray, preprocess) -> np.ndarray:
    """The map over the photo as the model saw it (its resize-and-crop region scaled to H x W), H x W x 3 uint8:
    the report's colours (negative δL red) at half opacity, on a symmetric scale; grey where there is no photo."""
    from PIL import Image

    from ..present.report.colours import colour_table
    from .truth import seen_region

    h, w = pixels.shape
    base = np.full((h, w, 3), 128, np.float64)
    if photo is not None:
        with Image.open(photo) as img:
            rgb = img.convert("RGB")
            region = seen_region(preprocess, *rgb.size)
            base = np.asarray(rgb.resize((w, h), Image.Resampling.BILINEAR, box=region), np.float64)
    limit = float(np.abs(pixels).max()) or 1.0
    index = np.clip(np.floor((pixels / limit + 1) / 2 * 256), 0, 255).astype(int)
    colours = colour_table()[index].astype(np.float64)
    return np.rint(0.5 * base + 0.5 * colours).astype(np.uint8)


def export_insight(found, records, preprocess, kind: str, to: Path, read) -> Path:
    """The insight's images to ``to`` for ``kind`` (one of :data:`EXPORTS`); returns ``to``. The folder is written
    whole or not at all (a fresh folder renamed into place); an existing non-empty ``to`` is refused."""
    module = need(kind)
    to = Path(to)
    check_export_to(to)
    samples = exported_samples(found, records, preprocess, read)
    to.parent.mkdir(parents=True, exist_ok=True)
    if kind == "wandb":  # the offline run records its files' absolute paths: written in place, removed on failure
        made = not to.exists()
        to.mkdir(exist_ok=True)
        try:
            to_wandb(module, samples, preprocess, to, found)
        except BaseException:
            for path in [to] if made else list(to.iterdir()):
                shutil.rmtree(path, ignore_errors=True)
            raise
        return to
    stage = Path(tempfile.mkdtemp(prefix=f".{to.name}.", suffix=".part", dir=to.parent))
    try:
        to_fiftyone(module, samples, preprocess, stage, found)
        if to.exists():
            to.rmdir()
        os.replace(stage, to)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return to


def check_export_to(to: Path) -> None:
    """``to`` may be written: it does not exist or is an empty folder."""
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ConfigError(f"--export-to {to} exists and is not empty; give a new or empty folder",
                          option="export_to", value=str(to))  # fmt: skip


def need(kind: str):
    """The package ``kind`` exports with, imported; one line with the pip command where it is not installed."""
    import importlib

    if kind not in EXPORTS:
        raise ConfigError(f"--export must be one of {', '.join(EXPORTS)}, got {kind!r}", option="export", value=kind,
                          expected=" or ".join(EXPORTS))  # fmt: skip
    try:
        return importlib.import_module(kind)
    except ImportError:
        raise ConfigError(f"--export {kind} needs the package {PIP[kind]}: pip install \"occlens[export]\" "
                          f"(or pip install {PIP[kind]})", option="export", value=kind) from None  # fmt: skip


def to_fiftyone(fo, samples: list[dict], preprocess, folder: Path, found) -> None:
    """The samples in FiftyOne's dataset folder format (``fo.types.LegacyFiftyOneDataset``): ``metadata.json``,
    ``samples.json`` (each sample's ``Sample.to_dict()``) and each map as ``fields/delta/STEM.npy``, its path
    relative to the folder (FiftyOne's importer resolves it there). Written without FiftyOne's database: the
    samples are FiftyOne's own objects, serialised as its exporter does."""
    import json

    maps = folder / "fields" / "delta"
    made = []
    for s in samples:
        if s["photo"] is None:
            continue
        r, row = s["record"], s["row"]
        limit = float(np.abs(s["pixels"]).max()) or 1.0
        path = maps / f"{r.stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, s["pixels"].astype(np.float32))
        sample = fo.Sample(filepath=str(s["photo"]))
        sample["key"] = r.key
        sample["delta"] = fo.Heatmap(map_path=f"fields/delta/{r.stem}.npy", range=[-limit, limit])
        if r.true_labels is not None:
            sample["ground_truth"] = fo.Classifications(classifications=[fo.Classification(label=t) for t in s["true"]])
        elif s["true"]:
            sample["ground_truth"] = fo.Classification(label=s["true"][0])
        if s["predicted"] is not None:
            sample["prediction"] = fo.Classification(label=s["predicted"], confidence=_number(r.confidence))
        sample["insight_view"] = row["view"]
        sample["insight_cluster"] = _number(row.get("cluster"))
        sample["insight_unusualness"] = _number(row.get("unusualness"))
        for metric in ("inside", "pointing"):
            if row.get(metric) is not None:
                sample[f"insight_{metric}"] = _number(float(row[metric]))
        made.append(sample.to_dict())
    info = {"occlens_run": str(found.run), "map": "δL of the first view's class; negative supported it"}
    (folder / "metadata.json").write_text(json.dumps({"name": f"occlens-{Path(found.run).name}", "media_type": "image",
                                                      "info": info}))  # fmt: skip
    (folder / "samples.json").write_text(json.dumps({"samples": made}))


def to_wandb(wandb, samples: list[dict], preprocess, folder: Path, found) -> None:
    """An offline W&B run in ``folder`` (``folder/wandb/offline-run-*``) logging the table ``insight``."""
    # the table's images are staged in W&B's data folder until `wandb sync`: inside the folder, not in the home's
    keep = {k: os.environ.get(k) for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_SILENT")}
    os.environ.update(WANDB_DATA_DIR=str(folder.absolute() / "data"), WANDB_CACHE_DIR=str(folder.absolute() / "cache"),
                      WANDB_SILENT="true")  # fmt: skip
    try:
        _wandb_run(wandb, samples, preprocess, folder, found)
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wandb_run(wandb, samples: list[dict], preprocess, folder: Path, found) -> None:
    columns = ["key", "photo", "delta", "true", "predicted", "confidence", "view", "cluster", "unusualness",
               "inside", "pointing"]  # fmt: skip
    run = wandb.init(mode="offline", dir=str(folder), project="occlens-insight", name=Path(found.run).name,
                     config={"run": str(found.run)}, settings=wandb.Settings(silent=True))  # fmt: skip
    try:
        table = wandb.Table(columns=columns)
        for s in samples:
            r, row = s["record"], s["row"]
            over = overlay(s["photo"], s["pixels"], preprocess)
            photo = wandb.Image(str(s["photo"])) if s["photo"] is not None else None
            table.add_data(r.key, photo, wandb.Image(over, caption=f"δL of {row['view']}"), ";".join(s["true"]),
                           s["predicted"], _number(r.confidence), row["view"], _number(row.get("cluster")),
                           _number(row.get("unusualness")), _number(row.get("inside")),
                           _number(row.get("pointing")))  # fmt: skip
        run.log({"insight": table})
    finally:
        run.finish()
