"""A detector's box explained as the windows grow: peak memory should stay flat, since windows stream in batches.

    nice -n 10 python -W ignore benchmarks/detection_memory.py --out benchmarks/results/detection_memory-cpu

Faster R-CNN MobileNetV3-Large FPN (random weights; occlens's ``load_model("torchvision:...")``, which keeps
detections down to a score of 0.001 and leaves the input's size as it is), one explicitly chosen reference box
(``box(xyxy, cls)``), window ``--patch`` at each of ``--strides`` on a ``--size``² image (16 at 16, 8 and 5 on
128²: 64, 225 and 576 windows). The region proposal network keeps 100 proposals per image (torchvision's
default is 1000): the box head's work on them is most of a pass, and 576 windows must fit in minutes on 2 busy
cores; what the windows could add to the peak is the explanation's, not the detector's.
Each stride runs in a fresh Python process, which reports its resident memory
before the explanation (torch imported, the model loaded and run once on the clean image) and its peak
(``ru_maxrss``): the explanation's own peak is the difference. The explanation runs with occlens's defaults
(the automatic batch). Target: the peak flat, at most 1.2x from the fewest windows to the most.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"
PROPOSALS = 100


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux's /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(size: int, patch: int, stride: int) -> dict:
    """One explanation in this process: its windows, seconds, batch, resident memory before and peak (MB)."""
    import torch

    import occlens
    from occlens.targets import box

    model = occlens.load_model(f"torchvision:{DETECTOR}", weights="random", device="cpu",
                               description={"input_size": size, "resize": size})  # fmt: skip
    rpn = model.module.model.rpn  # 100 proposals per image, not 1000 (module: occlens's normalisation around it)
    rpn._pre_nms_top_n["testing"] = rpn._post_nms_top_n["testing"] = PROPOSALS
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.module(image[None])  # the clean pass once: the model's own buffers are in "before"
    before = rss_mb()
    reference = box((size // 4, size // 4, 3 * size // 4, 3 * size // 4), cls=1)  # a chosen box, class 1
    start = time.perf_counter()
    got = occlens.explain(model, image, target=reference, patch=patch, stride=stride)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"windows": got.windows, "stride": stride, "batch": got.batch_size, "engine": got.engine,
            "seconds": seconds, "rss before MB": before, "peak RSS MB": peak, "explanation peak MB": peak - before,
            "load": round(os.getloadavg()[0], 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--strides", type=int, nargs="+", default=[16, 8, 5])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one stride, in this process
    ap.add_argument("--out", type=Path, help="results stem: STEM.json and STEM.md")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.size, args.patch, args.child)), flush=True)
        return
    if args.out is None:
        ap.error("--out is required")
    from meta import meta  # benchmarks/ is the script's own folder

    run = meta(load_before=os.getloadavg())
    rows = []
    for stride in args.strides:  # each in a fresh process: nothing of one run's heap carries over to the next
        command = [sys.executable, "-W", "ignore", __file__, "--size", str(args.size), "--patch", str(args.patch),
                   "--child", str(stride)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append({"model": DETECTOR, "size": args.size, "patch": args.patch, **json.loads(out.splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
        write(run, rows, args.out)  # each stride's row as soon as it is measured


def write(run: dict, rows: list[dict], out: Path) -> None:
    first, last = rows[0], rows[-1]
    run["load_after"] = os.getloadavg()
    own = last["explanation peak MB"] / max(first["explanation peak MB"], 1e-9)
    results = {"meta": run, "detection_memory": rows, "explanation peak ratio": own,
               "peak ratio, most windows / fewest": last["peak RSS MB"] / first["peak RSS MB"]}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [f"`{m['command']}` · {m['date']} · {m['cpu']['model']} ({', '.join(m['cpu']['flags'])}), "
             f"load {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after", "",
             "| windows | stride | batch | seconds | RSS before | peak RSS | explanation's peak |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["detection_memory"]:
        lines.append(f"| {r['windows']} | {r['stride']} | {r['batch']} | {r['seconds']:.1f} | {r['rss before MB']:.0f} "
                     f"MB | {r['peak RSS MB']:.0f} MB | {r['explanation peak MB']:.0f} MB |")  # fmt: skip
    lines += ["", f"peak RSS, most windows / fewest: {results['peak ratio, most windows / fewest']:.2f}x; "
              f"the explanation's own peak: {results['explanation peak ratio']:.2f}x"]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
