"""Seconds per figure: a new ``occlens.plot`` saved as PNG (``occlens explain``'s figure) against the dataset
runs' cached figures (``occlens.present.figure.Figures``: one figure per layout, updated in place).

    python benchmarks/figures.py

Mistakes (two rows: Q's and K's maps) of a small random CNN on random images, at 32 x 32 with 4 x 4
windows (the workload of ``benchmarks/dataset_run.py``) and at 224 x 224 with 27 x 27 windows (patch 16,
stride 8), dpi 110; the median of ``--repeat`` images after one to warm up. Writes
``results/figures-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import time
from pathlib import Path

import matplotlib
import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder

import occlens
from occlens.present.figure import Figures, plot

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10)).eval()  # fmt: skip
    rows = []
    for size, patch, stride in ((32, 8, 8), (224, 16, 8)):
        results = []
        for _ in range(args.repeat + 1):
            x = torch.rand(3, size, size)
            wrong = (occlens.explain(net, x, patch=size).predicted + 1) % 10  # a mistake: K's row too
            results.append(occlens.explain(net, x, label=wrong, patch=patch, stride=stride))
        times = {"plot + savefig": [], "cached Figures": []}
        cached = Figures()
        for i, r in enumerate(results):
            start = time.perf_counter()
            plot(r, r.image).savefig(io.BytesIO(), format="png", dpi=110)
            middle = time.perf_counter()
            cached.png(r, r.image)
            end = time.perf_counter()
            if i:  # the first builds the cached figure
                times["plot + savefig"].append(middle - start)
                times["cached Figures"].append(end - middle)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"image": f"{size}x{size}", "windows": results[0].windows,
                     **{k: round(v, 4) for k, v in medians.items()},
                     "speed-up": round(medians["plot + savefig"] / medians["cached Figures"], 2)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    meta = {"cpu_count": os.cpu_count(), "matplotlib": matplotlib.__version__,
            "date": datetime.date.today().isoformat(), "load_average": round(os.getloadavg()[0], 2),
            "repeat": args.repeat}  # fmt: skip
    meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
    lines = ["| image | windows | plot + savefig s | cached Figures s | speed-up |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['windows']} | {r['plot + savefig']} | {r['cached Figures']} | {r['speed-up']} |"
        )
    md = "\n".join(lines)
    print(f"\n{json.dumps(meta)}\n\n{md}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "figures-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS / "figures-cpu.md").write_text(f"{json.dumps(meta)}\n\n{md}\n")


if __name__ == "__main__":
    main()
