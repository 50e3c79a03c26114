"""Throughput, disk footprint, report and resume of ``occlens run``: N small images, a tiny CNN, the command
as a user runs it.

    python benchmarks/dataset_run.py --images 10000 --baseline OLD/src   # OLD: a checkout of an earlier occlens

Makes an ImageFolder dataset of N random 64 x 64 PNGs in 10 classes and a tiny TorchScript CNN (32 x 32
input, 10 classes, random weights) in a temporary folder. Each image goes into the folder of the class the
model predicts for it, except a fifth of them (``--mistakes``), which go into another class's folder: the
mistakes of a validation run (ResNet-50 misses about a fifth of ImageNet's validation set). Then, each as
``python -m occlens run DATA --out OUT --model tiny.pt --patch 8 --device cpu`` (4 x 4 windows):

* ``before``: an earlier occlens (``--baseline SRC``, its ``src`` folder) on the first
  ``--baseline-images`` images (a CSV listing them), where it drew every image's figure;
* the default ``--figures`` (mistakes) on all N; a re-run of it with nothing left to do (resume);
* ``--figures none`` on all N;
* ``--ray --workers 2`` on the first ``--ray-images``.

Each row: wall time and images/s (Python start-up, Ray's and the last report included), the bytes per
image under DIR/images (results and previews; figures apart). Then the time of one ``write_report`` call
on the finished N-image DIR, and the footprint at 729 windows (a bundled 224 x 224 photo, the default
model, patch 16, stride 8: a 27 x 27 grid) of a correct image, a mistake (two maps) and ``--all-classes``.
Writes ``results/dataset_run-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = 10
RESULTS = Path(__file__).parent / "results"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32, CLASSES),
        )

    def forward(self, x):
        return self.body(x)


def make(root: Path, n: int, mistakes: float = 0.2) -> tuple[Path, Path]:
    """``root/data`` (ImageFolder: each image in its predicted class's folder but a ``mistakes`` share in
    another's) and ``root/tiny.pt`` with its description ``tiny.json``."""
    import occlens
    from occlens.core.image import read_image

    torch.jit.trace(Tiny().eval(), torch.rand(1, 3, 32, 32)).save(str(root / "tiny.pt"))
    description = {"input_size": [32, 32], "resize": None, "labels": [f"class{c}" for c in range(CLASSES)]}
    (root / "tiny.json").write_text(json.dumps(description))
    model = occlens.load_model(str(root / "tiny.pt"), device="cpu")
    rng = np.random.default_rng(0)
    staging = root / "staging"
    staging.mkdir()
    for i in range(n):
        path = staging / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        with torch.no_grad():
            predicted = int(model.module(model.preprocess(read_image(path))[None]).argmax())
        label = (predicted + 1 + int(rng.integers(CLASSES - 1))) % CLASSES if rng.random() < mistakes else predicted
        folder = root / "data" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / path.name)
    staging.rmdir()
    return root / "data", root / "tiny.pt"


def first(data: Path, n: int, csv: Path) -> Path:
    """A CSV of ``n`` images of the ImageFolder ``data``, with their labels: every k-th by key, so that the
    subset has the whole set's share of mistakes."""
    rows = sorted((p.relative_to(data).as_posix(), p.parent.name) for p in data.rglob("*.png"))
    rows = rows[:: max(1, len(rows) // n)][:n]
    csv.write_text("path,label\n" + "".join(f"{data.name}/{key},{label}\n" for key, label in rows))
    return csv


def timed(argv: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"occlens run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.splitlines()[0]


def footprint(images: Path) -> dict:
    """Bytes per explained image under ``images``: results and previews, and the figures apart."""
    sizes: dict[str, int] = {}
    for p in images.rglob("*"):
        if p.is_file():
            sizes[p.suffix] = sizes.get(p.suffix, 0) + p.stat().st_size
    n = sum(1 for _ in images.rglob("*.npz"))
    return {
        "images": n,
        "bytes_per_image": round(sum(sizes.get(s, 0) for s in (".json", ".npz", ".jpg")) / n),
        "figures": sum(1 for _ in images.rglob("*.png")),
        "figure_bytes_per_image": round(sizes.get(".png", 0) / n),
    }


def report_time(out: Path) -> float:
    """One write_report call on the finished run in ``out`` (this process; the current report code)."""
    from occlens.app.manifest import Manifest
    from occlens.app.summary import summarize_run
    from occlens.present.report import write_report

    with Manifest(out) as manifest:
        records = list(manifest.records().values())
    start = time.perf_counter()
    write_report(out, records, summarize_run(records), images=out / "images", title="benchmark")
    return time.perf_counter() - start


def footprint_729(root: Path) -> list[dict]:
    """Bytes of a dataset run's files (json + npz + preview) at 729 windows: a bundled photo, the default model."""
    import occlens
    from occlens.app.outputs import preview_jpeg
    from occlens.core.samples import samples

    model = occlens.load_model("default", device="cpu")
    sample = samples()[0]
    rows = []
    predicted = occlens.explain(model, sample.path, patch=32).predicted  # the model's class for the photo
    other = (predicted + 1) % len(model.labels)
    for name, label, every in (("correct", predicted, False), ("mistake (K's map too)", other, False),
                               ("mistake, --all-classes", other, True)):  # fmt: skip
        r = occlens.explain(model, sample.path, label=label, patch=16, stride=8, all_classes=every)
        stem = root / f"fp-{len(rows)}"
        r.save(stem, compact=True)
        stem.with_suffix(".jpg").write_bytes(preview_jpeg(r.image))
        sizes = {s: stem.with_name(stem.name + s).stat().st_size for s in (".json", ".npz")}
        sizes[".jpg"] = stem.with_suffix(".jpg").stat().st_size
        rows.append({"image": name, "windows": r.windows, "correct": r.correct, **{k[1:]: v for k, v in sizes.items()},
                     "total": sum(sizes.values())})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mistakes", type=float, default=0.2, help="share of images in another class's folder")
    parser.add_argument("--baseline", type=Path, help="the src folder of an earlier occlens, for the 'before' row")
    parser.add_argument("--baseline-images", type=int, default=1000)
    parser.add_argument("--ray-images", type=int, default=2000, help="images of the --ray row (0: no such row)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, model = make(root, args.images, args.mistakes)
        base = [sys.executable, "-m", "occlens", "run", "--model", str(model), "--patch", "8", "--device", "cpu",
                "--workers", str(args.workers)]  # fmt: skip

        def row(name: str, dataset: Path, n: int, out: Path, extra=(), env=None) -> None:
            load = os.getloadavg()[0]
            seconds, line = timed([*base, str(dataset), "--out", str(out), *extra], env)
            rows.append({"run": name, "images": n, "wall_s": round(seconds, 1), "images_per_s": round(n / seconds, 2),
                         **footprint(out / "images"), "load_average_before": round(load, 2),
                         "summary": line})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

        if args.baseline is not None:
            env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
            subset = first(data, args.baseline_images, root / "before.csv")
            row("before (earlier occlens, every figure drawn)", subset, args.baseline_images, root / "before", (), env)
        row("--figures mistakes (the default)", data, args.images, root / "out")
        start = time.perf_counter()
        timed([*base, str(data), "--out", str(root / "out")])
        resume_s = time.perf_counter() - start
        print(f"resume with all {args.images} done: {resume_s:.1f} s", flush=True)
        report_s = report_time(root / "out")
        print(f"write_report of {args.images} images: {report_s:.1f} s", flush=True)
        row("--figures none", data, args.images, root / "none", ("--figures", "none"))
        if args.ray_images:
            subset = first(data, args.ray_images, root / "ray.csv")
            row(f"--ray --workers {args.workers}", subset, args.ray_images, root / "ray",
                ("--ray",))  # fmt: skip
        sizes = footprint_729(root)
    meta = {
        "workload": f"random 64x64 PNGs, tiny TorchScript CNN (32x32 input, 10 classes), --patch 8 (16 windows), "
        f"--device cpu, --workers {args.workers}, {args.mistakes:.0%} of the images in another class's folder",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "resume_all_done_s": round(resume_s, 1),
        "write_report_s": round(report_s, 2),
        "images": args.images,
    }
    lines = ["| run | images | wall s | images/s | bytes/image (json+npz+jpg) | figures | figure bytes/image | "
             "load avg before |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['run']} | {r['images']} | {r['wall_s']} | {r['images_per_s']} | {r['bytes_per_image']} | "
                     f"{r['figures']} | {r['figure_bytes_per_image']} | {r['load_average_before']} |")  # fmt: skip
    lines += ["", f"resume of the {args.images}-image run with everything done: {resume_s:.1f} s (start-up and the "
              f"report's rewrite included); one write_report call on it: {report_s:.2f} s", "",
              "| 729 windows (224x224, default model) | correct | json | npz | jpg | total |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for s in sizes:
        lines.append(f"| {s['image']} | {s['correct']} | {s['json']} | {s['npz']} | {s['jpg']} | {s['total']} |")
    md = "\n".join(lines)
    print(f"\n{json.dumps(meta)}\n\n{md}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataset_run-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows, "footprint_729": sizes},
                                                             indent=1))  # fmt: skip
    (RESULTS / "dataset_run-cpu.md").write_text(f"{json.dumps(meta)}\n\n{md}\n")


if __name__ == "__main__":
    main()
