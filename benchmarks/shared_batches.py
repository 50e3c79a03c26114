"""What sharing forward passes between images buys: ``explain(model, [images])`` against one call per image.

    python benchmarks/shared_batches.py --images 64 --rounds 3 --out benchmarks/results/shared_batches-cpu

A list of images of one shape, explained exactly by the dense engine, streams the windows of several images
through the model together (``occlens.engines.dense.together``): where an image has fewer windows than a
batch holds, the batches stay full. Each row times both ways on the same images, interleaved, best of
``--rounds``, and checks that the maps agree (max |δL| difference). Models: a small CNN on 64 x 64 images
(window 16: 16 windows each; window 32: 4 windows), ResNet-18 on 64 x 64 images, and the small CNN called
as a numpy function (what ONNX Runtime, scikit-learn or an endpoint look like to occlens), at the automatic
batch size and at 32 and 64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from meta import meta as run_meta  # benchmarks/ is the script's own folder

import occlens


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()


def as_numpy_function(module: torch.nn.Module):
    def scores(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return scores


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def row(name, model, images, patch, batch, rounds, layout=None) -> dict:
    options = {"patch": patch, "batch_size": batch, "engine": "dense", "layout": layout}
    occlens.explain(model, images, **options)  # warm-up: every batch shape either way meets
    [occlens.explain(model, x, **options) for x in images[:2]]
    alone, shared = [], []
    for _ in range(rounds):
        t, one_by_one = timed(lambda: [occlens.explain(model, x, **options) for x in images])
        alone.append(t)
        t, together = timed(lambda: occlens.explain(model, images, **options))
        shared.append(t)
    diff = max(float(np.abs(a.delta - b.delta).max()) for a, b in zip(one_by_one, together, strict=True))
    windows = together[0].windows
    return {
        "model": name,
        "windows per image": windows,
        "batch (list)": together[0].batch_size,
        "one call per image (images/s)": len(images) / min(alone),
        "one call for the list (images/s)": len(images) / min(shared),
        "speed-up": min(alone) / min(shared),
        "max abs Δ": diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write OUT.json and OUT.md")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(args.images)]
    cnn = small_cnn()
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    rows = []
    for name, model, patch, batch, layout in [
        ("small CNN", cnn, 16, None, None),
        ("small CNN", cnn, 16, 32, None),
        ("small CNN", cnn, 16, 64, None),
        ("small CNN", cnn, 32, 32, None),
        ("ResNet-18", resnet, 16, None, None),
        ("ResNet-18", resnet, 16, 32, None),
        ("small CNN as numpy", as_numpy_function(cnn), 16, None, "NCHW"),
        ("small CNN as numpy", as_numpy_function(cnn), 32, None, "NCHW"),
    ]:
        rows.append(row(name, model, images, patch, batch, args.rounds, layout))
        r = rows[-1]
        print(
            f"{r['model']:<20} {r['windows per image']:>3} windows, batch {r['batch (list)']:>3}: "
            f"{r['one call per image (images/s)']:7.1f} -> {r['one call for the list (images/s)']:7.1f} images/s "
            f"({r['speed-up']:.2f}x), max abs Δ {r['max abs Δ']:.1e}",
            flush=True,
        )
    if args.out:
        out = Path(args.out)
        meta = {"images": args.images, "size": "64x64", "rounds": args.rounds, "torch threads": torch.get_num_threads()}
        meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        head = list(rows[0])
        lines = [
            f"# shared batches: {args.images} images of 64 x 64, best of {args.rounds}, "
            f"{torch.get_num_threads()} torch threads",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for r in rows:
            cells = [f"{v:.1e}" if k == "max abs Δ" else f"{v:.2f}" if isinstance(v, float) else str(v)
                     for k, v in r.items()]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
