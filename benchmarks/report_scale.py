"""What the dataset report costs: writing it for N images, updating it, and its bytes per image.

    python benchmarks/report_scale.py --images 10000

Writes a synthetic run in a temporary folder, in a run's on-disk format: ``--variants`` distinct
results at 224 x 224 with 27 x 27 windows (patch 16, stride 8: 729 windows), 1000 classes, every
5th a mistake (with the map of the true class K, as ``occlens run`` writes it), hard-linked under N
image stems, and their manifest records. Then, once with the run's preview ``STEM.jpg`` beside each
result (the model's view, made from the bundled photos) and once without (the report makes
``report/previews/ID.jpg`` from the image file), it times
:func:`occlens.present.report.write_report`: the first write of N - ``--update`` images, the update
that adds the last ``--update``, and a call with nothing new; and it measures the report's bytes per
image (its data file, its preview when it makes one, its share of ``index.js``). Files are written as
a run writes them (temporary name, fsync, rename).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from occlens.app.summary import summarize_run
from occlens.core.grid import Grid
from occlens.core.records import Record
from occlens.core.result import ClassMap, OcclusionResult
from occlens.core.samples import sample
from occlens.core.settings import Settings
from occlens.present.report import write_report

CLASSES = 1000
PHOTOS = ("chelsea", "coffee", "camera")


def result_of(v: int, rng: np.random.Generator) -> OcclusionResult:
    """Distinct result ``v``: 729 windows, a mistake with K's map when v % 5 == 0."""
    grid = Grid(224, 224, (16, 16), (8, 8))
    label = v % CLASSES
    predicted = (label + 1 + v % 7) % CLASSES if v % 5 == 0 else label
    p = rng.random(CLASSES) * 0.2 / CLASSES
    p[predicted] = 0.2 + 0.79 * rng.random()
    p /= p.sum()
    y, x = np.mgrid[0:27, 0:27]
    centre = rng.random(2) * 27
    delta = -np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / 60) * rng.uniform(0.5, 3)
    delta = delta + rng.normal(0, 0.05, delta.shape)

    def class_map(k: int, d: np.ndarray) -> ClassMap:
        return ClassMap.compute(k, np.log(p[k]), (np.log(p[k]) + d).ravel(), grid)

    names = {k: f"class {k}" for k in (label, predicted)}
    top = np.argsort(-p, kind="stable")[:5]
    meta = {"model": "synthetic", "predicted_name": names[predicted], "label_name": names[label],
            "target_name": names[predicted],
            "top_k": [{"class": int(c), "name": f"class {c}", "probability": float(p[c])} for c in top]}  # fmt: skip
    return OcclusionResult(predicted=predicted, label=label, target=predicted, probabilities=p, grid=grid,
                           settings=Settings(16, 8), target_map=class_map(predicted, delta),
                           label_map=None if label == predicted else class_map(label, -0.6 * delta),
                           meta=meta)  # fmt: skip


def make_run(out: Path, n: int, variants: int, previews: bool) -> list[Record]:
    """``out/images/STEM.json|.npz`` (and ``.jpg`` with ``previews``) for ``n`` images, and their records."""
    rng = np.random.default_rng(0)
    source = out / "variants"
    source.mkdir(parents=True)
    results = []
    for v in range(variants):
        result = result_of(v, rng)
        result.save(source / f"v{v}")
        photo = sample(PHOTOS[v % len(PHOTOS)]).path
        with Image.open(photo) as img:  # the model's view: a resize and centre crop to 224 x 224
            view = ImageOps.fit(img.convert("RGB"), (224, 224), Image.Resampling.BICUBIC, centering=rng.random(2))
        view.save(source / f"v{v}.jpg", quality=90)
        results.append((result, photo))
    records = []
    for i in range(n):
        v = i % variants
        r, photo = results[v]
        folder = f"n{r.label:04d}"
        stem = f"{folder}/val_{i:08d}"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".npz", ".jpg") if previews else (".json", ".npz"):
            os.link(source / f"v{v}{suffix}", out / "images" / f"{stem}{suffix}")
        p = r.probabilities
        records.append(Record(
            f"{stem}.JPEG", str(photo), stem, "ok", label=r.label, label_name=r.meta["label_name"],
            predicted=r.predicted, predicted_name=r.meta["predicted_name"], confidence=float(p[r.predicted]),
            label_probability=float(p[r.label]), loss=r.loss, seconds=0.1, finished="2026-01-01T00:00:00+00:00",
        ))  # fmt: skip
    return records


def timed(out: Path, records: list[Record], total: int) -> float:
    summary = summarize_run(records)  # the run computes it anyway; not the report's time
    start = time.perf_counter()
    write_report(out, records, summary, images=out / "images", title="benchmark", total=total)
    return time.perf_counter() - start


def sizes(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return len(files), (sum(p.stat().st_size for p in files) / len(files) if files else 0.0)


def measure(root: Path, n: int, update: int, variants: int, previews: bool) -> dict:
    out = root / ("run-preview" if previews else "report-preview")
    records = make_run(out, n, variants, previews)
    first = timed(out, records[: n - update], n)
    more = timed(out, records, n)
    again = timed(out, records, n)
    folder = out / "report"
    data_n, data_bytes = sizes(folder / "data")
    preview_n, preview_bytes = sizes(folder / "previews")
    index = (folder / "index.js").stat().st_size
    static = sum((folder / f).stat().st_size for f in ("index.html", "image.html", "report.js", "report.css"))
    run_jpg = (out / "images" / f"{records[0].stem}.jpg").stat().st_size if previews else 0
    run_files = sum((out / "images" / f"{records[0].stem}{s}").stat().st_size for s in (".json", ".npz"))
    shutil.rmtree(out)
    return {
        "preview": "the run's STEM.jpg" if previews else "made by the report",
        "images": n,
        "first_s": round(first, 2),
        "first_ms_per_image": round(1000 * first / (n - update), 3),
        "update_images": update,
        "update_s": round(more, 3),
        "nothing_new_s": round(again, 3),
        "data_files": data_n,
        "data_bytes_per_image": round(data_bytes),
        "previews": preview_n,
        "preview_bytes_per_image": round(preview_bytes),
        "index_bytes_per_image": round(index / n),
        "static_bytes": static,
        "report_bytes_per_image": round(data_bytes + preview_bytes * preview_n / n + index / n),
        "run_preview_bytes": run_jpg,
        "run_json_npz_bytes_now": run_files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--update", type=int, default=100, help="images the update adds")
    parser.add_argument("--variants", type=int, default=200, help="distinct results, hard-linked")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for previews in (True, False):
            rows.append(measure(Path(tmp), args.images, args.update, args.variants, previews))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| preview | first write of {args.images - args.update} | ms/image | update (+{args.update}) | "
          f"nothing new | data file | preview | index.js | report bytes/image |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preview']} | {r['first_s']} s | {r['first_ms_per_image']} | {r['update_s']} s | "
              f"{r['nothing_new_s']} s | {r['data_bytes_per_image']} B | {r['preview_bytes_per_image']} B | "
              f"{r['index_bytes_per_image']} B | {r['report_bytes_per_image']} B |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
