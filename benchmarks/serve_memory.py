"""Peak memory of ``occlens serve`` decoding the worst image each pixel mode accepts, one at a time and 8 at once.

    python benchmarks/serve_memory.py                                # ~3 min on 2 CPU cores: results/...-after
    python benchmarks/serve_memory.py --src OTHER/src --tag before   # the same uploads to another checkout's server

Each case starts ``python -m occlens serve --port 0`` as a user would (a tiny TorchScript CNN, 48 x 64 input,
``--patch 8``, on the CPU) in a process of its own, warms it with one small upload, reads its resident memory
(``/proc/PID/status`` VmRSS: the idle), resets its peak (``/proc/PID/clear_refs``), POSTs the case's upload(s) to
``/api/explain`` and reads the peak (VmHWM) and the memory left after (VmRSS), both above the idle.

The images are what an attacker would send: a few kilobytes of a constant colour, as large as the server's
defaults accept (``--max-pixels``: Pillow's 89,478,485 pixels; ``--max-decode-mb`` 512 by the cost of
``occlens.core.image.decode_cost``): per pixel mode (and for the formats whose decoders hold the most), the
largest square side whose decoding fits, plus the 88-megapixel PNGs of the issue that reported the problem.
Reported per case: the answer's status, the peak above idle, and the peak over the image's size decoded to RGB
(Pillow stores an RGB pixel in 4 bytes: the image the decoding yields); for 8 uploads at once, the peak against
the budget x ``--decodes`` (2). ``--src`` runs the same uploads against another checkout (before a change).

Writes ``results/serve_memory-cpu-TAG.json`` and ``results/serve_memory-cpu.md`` (every tag found).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import tiny_model  # noqa: E402
from served import Served  # noqa: E402

from occlens.core.image import decode_cost  # noqa: E402
from occlens.serve.viewer import DEFAULT_DECODE_MB, DEFAULT_DECODES  # noqa: E402

MB = 1 << 20
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, the server's default --max-pixels
CASES = [  # name, mode, format, save options
    ("RGB PNG", "RGB", "PNG", {"compress_level": 9}),
    ("RGB JPEG", "RGB", "JPEG", {}),
    ("8-bit gray PNG", "L", "PNG", {"compress_level": 9}),
    ("1-bit PNG", "1", "PNG", {"compress_level": 9}),
    ("palette GIF", "P", "GIF", {}),
    ("RGBA PNG", "RGBA", "PNG", {"compress_level": 9}),
    ("CMYK JPEG", "CMYK", "JPEG", {}),
    ("16-bit PNG", "I;16", "PNG", {"compress_level": 9}),
    ("float TIFF", "F", "TIFF", {"compression": "tiff_deflate"}),
    ("progressive JPEG 4:4:4", "RGB", "JPEG", {"progressive": True, "subsampling": 0}),
    ("WebP lossless", "RGB", "WEBP", {"lossless": True}),
]
ISSUE_SIDE = 9400  # 88.4 megapixels: the issue's "10 KB PNG just under the pixel limit"
FILL = {"1": 1, "L": 7, "P": 7, "I;16": 300, "F": 0.5}


def encoded(mode: str, fmt: str, options: dict, side: int) -> bytes:
    image = Image.new(mode, (side, side), FILL.get(mode, (10, 20, 30, 255)[: len(mode)]))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def largest_side(mode: str, fmt: str, options: dict, budget_mb: float) -> int:
    """The largest square side within the pixel limit (and WebP's 16383) whose decoding cost fits the budget."""
    probe = Image.open(io.BytesIO(encoded(mode, fmt, options, 64)))
    side = min(int(MAX_PIXELS**0.5), 16383)
    while True:
        probe._size = (side, side)  # the cost of the same file at this size (its format, mode and options)
        if decode_cost(probe) <= budget_mb * MB:
            break
        side -= 16
    data = encoded(mode, fmt, options, side)
    while decode_cost(Image.open(io.BytesIO(data))) > budget_mb * MB:  # a TIFF's strips, say: step down
        side -= 64
        data = encoded(mode, fmt, options, side)
    return side


def measure(src: Path, model: Path, data: bytes, name: str, at_once: int) -> dict:
    served = Served(["--model", str(model), "--device", "cpu", "--patch", "8"], src)
    try:
        served.post(encoded("RGB", "PNG", {}, 64), "warm.png")
        time.sleep(0.5)
        idle = served.status("VmRSS")
        served.reset_peak()
        answers: list[tuple[int, str]] = []
        t = time.perf_counter()
        threads = [threading.Thread(target=lambda: answers.append(served.post(data, name))) for _ in range(at_once)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - t
        time.sleep(1.0)
        peak, after = served.status("VmHWM"), served.status("VmRSS")
    finally:
        served.close()
    statuses = sorted({s for s, _ in answers})
    return {"statuses": statuses, "message": next((m for _, m in answers if m), ""), "seconds": round(seconds, 2),
            "idle_mb": round(idle, 1), "peak_above_idle_mb": round(peak - idle, 1),
            "after_above_idle_mb": round(after - idle, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the sources whose server is measured")
    parser.add_argument("--tag", default="after", help="the name of these results (before, after, ...)")
    parser.add_argument("--at-once", type=int, default=8)
    args = parser.parse_args()
    budget, width = DEFAULT_DECODE_MB, DEFAULT_DECODES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp))
        plan = [(name, mode, fmt, options, largest_side(mode, fmt, options, budget), 1)
                for name, mode, fmt, options in CASES]  # fmt: skip
        plan += [(f"issue: {name}", mode, fmt, options, ISSUE_SIDE, 1) for name, mode, fmt, options in CASES[:1]]
        plan += [(f"issue: {CASES[3][0]}", *CASES[3][1:], ISSUE_SIDE, 1)]
        plan += [(name, mode, fmt, options, side, args.at_once) for name, mode, fmt, options, side, _ in plan[:1]]
        plan += [(name, mode, fmt, options, side, args.at_once) for name, mode, fmt, options, side, _ in plan[5:6]]
        for name, mode, fmt, options, side, at_once in plan:
            data = encoded(mode, fmt, options, side)
            result = measure(args.src, model, data, f"worst.{fmt.lower()}", at_once)
            rgb_mb = side * side * 4 / MB
            cost_mb = decode_cost(Image.open(io.BytesIO(data))) / MB
            row = {"case": name, "mode": mode, "format": fmt, "side": side, "megapixels": round(side * side / 1e6, 1),
                   "file_kb": round(len(data) / 1024, 1), "at_once": at_once, "rgb_mb": round(rgb_mb, 1),
                   "cost_mb": round(cost_mb, 1), **result,
                   "peak_over_rgb": round(result["peak_above_idle_mb"] / rgb_mb, 2)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = run_meta()
    out = {"meta": info, "tag": args.tag, "cpu": info["cpu"]["model"], "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "date": datetime.date.today().isoformat(), "budget_mb": budget,
           "decodes": width, "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serve_memory-cpu-{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")
    write_markdown()


def write_markdown() -> None:
    lines = ["# occlens serve: peak memory of decoding (CPU)", "",
             "Each case: a fresh `occlens serve` (tiny CNN, --patch 8), one small upload to warm it, then the case's "
             "upload(s) to /api/explain; peak (VmHWM) and what is left after (VmRSS), above the idle VmRSS. "
             "\"x RGB\": the peak over the image's size decoded to RGB (4 bytes a pixel, as Pillow stores it). "
             "The images are constant colours, as large as the new defaults accept (--max-pixels 89,478,485, "
             "--max-decode-mb 512, --decodes 2), and the issue's 88-megapixel PNGs.", ""]  # fmt: skip
    found = RESULTS.glob("serve_memory-cpu-*.json")
    for path in sorted(found, key=lambda p: ("-before" not in p.stem, p.stem)):  # before first
        out = json.loads(path.read_text())
        lines += [f"## {out['tag']}", "",
                  f"{out['cpu']}, {out['cpu_count']} CPU cores, torch {out['torch']}, {out['date']}.", "",
                  "| case | side | MP | file KB | at once | status | RGB MB | cost MB | peak above idle MB | x RGB "
                  "| left after MB | s |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in out["rows"]:
            status = "/".join(map(str, r["statuses"]))
            lines.append(f"| {r['case']} | {r['side']} | {r['megapixels']} | {r['file_kb']} | {r['at_once']} | "
                         f"{status} | {r['rgb_mb']} | {r['cost_mb']} | {r['peak_above_idle_mb']} | "
                         f"{r['peak_over_rgb']} | {r['after_above_idle_mb']} | {r['seconds']} |")  # fmt: skip
        lines.append("")
    (RESULTS / "serve_memory-cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
