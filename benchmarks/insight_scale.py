"""What ``occlens insight`` costs per image over a large run's stored maps (no forward pass).

    python benchmarks/insight_scale.py --images 50000 --json benchmarks/results/insight_scale-cpu.json

Writes a synthetic run in a temporary folder in a run's on-disk format (:mod:`report_scale`'s: ``--variants``
distinct results at 224 x 224 with 27 x 27 windows, 1000 classes, every 5th a mistake with K's map,
hard-linked under N image stems, and a manifest), then times :func:`occlens.insight` on it: without ground
truth, and with a box per image (a CSV with the photo's size, so no image file is opened). Reports seconds
and milliseconds per image, the bytes the page's data file takes per image, and the seconds the page takes to
open and draw in headless Chromium.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report_scale import make_run

import occlens
from occlens.app.manifest import Manifest


def meta(argv: list[str]) -> dict:
    import torch
    import torchvision

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("Flags")), [])
    return {
        "command": " ".join(["python", *argv]),
        "date": datetime.date.today().isoformat(),
        "cpu": {"model": model, "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]},
        "gpu": None,
        "load_average": [round(v, 2) for v in os.getloadavg()],  # a shared machine: others' work slows every number
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "occlens": occlens.__version__},  # fmt: skip
    }


def page_open(page: Path) -> float | None:
    """Seconds from loading the page in headless Chromium until it is drawn (its body's data-ready), or None
    where no Chromium is installed."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox"])
        try:
            tab = browser.new_context(offline=True, viewport={"width": 1280, "height": 1000}).new_page()
            start = time.perf_counter()
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready]", timeout=120_000)
            return round(time.perf_counter() - start, 2)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--variants", type=int, default=200, help="distinct results, hard-linked")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        records = make_run(out, args.images, args.variants, previews=True)
        with Manifest(out) as manifest:
            manifest.start({"fingerprint": 2, "dataset": "synthetic"})
            manifest.add_all(records)
        rng = np.random.default_rng(0)
        lines = ["key,x0,y0,x1,y1,width,height"]
        for r in records:
            x0, y0 = rng.integers(0, 160, 2)
            lines.append(f"{r.key},{x0},{y0},{x0 + 64},{y0 + 64},224,224")
        (Path(tmp) / "boxes.csv").write_text("\n".join(lines) + "\n")
        for boxes in (None, Path(tmp) / "boxes.csv"):
            start = time.perf_counter()
            found = occlens.insight(out, boxes=boxes, out=Path(tmp) / "insight", progress=False)
            seconds = time.perf_counter() - start
            data = (found.out / "insight-data.js").stat().st_size
            rows.append({
                "images": args.images, "ground_truth": "boxes" if boxes else None, "seconds": round(seconds, 2),
                "ms_per_image": round(1000 * seconds / args.images, 3),
                "views": len(found.classes) + len(found.confusions),
                "page_data_bytes_per_image": round(data / args.images), "page_open_s": page_open(found.page),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta(sys.argv), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
