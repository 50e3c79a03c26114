"""Peak memory of ``occlens.explain`` on a volume as the windows grow: flat (issue #32 asks <= 1.2x from 216 to
3,375 windows) for the dense engine and the incremental one.

Each configuration runs in a fresh process that builds a tiny 3-D net and a 1 x 128 x 128 x 128 volume, then
reports its peak RSS above what it held just before ``occlens.explain`` (the batch buffer, the activations, the
incremental engine's cached clean maps and plan, the result). The batch size is fixed (16) so that only the number
of windows changes between rows.

    python benchmarks/volume_windows_memory.py     # writes benchmarks/results/volume_windows_memory-cpu.{json,md}
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from meta import meta as run_meta  # benchmarks/ is the script's own folder

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 128
BATCH = 16
CONFIGS = [  # (patch, stride): 216, 1,000 and 3,375 windows on 128³ (a stride is at most its patch)
    (48, 16),
    (32, 11),  # the last window clipped at the edge: 10 a side
    (16, 8),
]
ENGINES = ("dense", "incremental")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    """Start the peak RSS (VmHWM) over from the current RSS (Linux: ``5`` into ``/proc/self/clear_refs``), so the
    warm-up's peak does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def tiny_net():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2),
    ).eval()  # fmt: skip


def child(engine: str, patch: int, stride: int) -> dict:
    import torch

    import occlens

    torch.set_num_threads(2)
    model = tiny_net()
    scan = occlens.Volume(torch.rand((1, SIDE, SIDE, SIDE), generator=torch.Generator().manual_seed(0)))
    occlens.explain(model, scan, patch=32, stride=32, engine=engine, batch_size=BATCH, progress=False)  # warm-up
    before = rss()
    reset_peak()
    start = time.perf_counter()
    result = occlens.explain(model, scan, patch=patch, stride=stride, engine=engine, batch_size=BATCH, progress=False)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    copy = SIDE**3 * 4
    return {"engine": result.engine, "asked": engine, "patch": patch, "stride": stride, "windows": result.grid.size,
            "peak_above_start_mb": max(0, peak - before) / 2**20, "peak_in_copies": max(0, peak - before) / copy,
            "seconds": seconds}  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    rows = []
    for engine in ENGINES:
        for patch, stride in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", engine, str(patch), str(stride)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    growth = {}
    for engine in ENGINES:
        mine = [r for r in rows if r["asked"] == engine]
        growth[engine] = max(r["peak_above_start_mb"] for r in mine) / max(1e-9, mine[0]["peak_above_start_mb"])
    meta = run_meta()
    RESULTS.mkdir(exist_ok=True)
    data = {"meta": meta, "volume": [1, SIDE, SIDE, SIDE], "batch": BATCH, "rows": rows,
            "largest_over_fewest_windows": growth}  # fmt: skip
    (RESULTS / "volume_windows_memory-cpu.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        f"`{meta['command']}`, {meta['date']}; {meta['cpu']['model']} ({', '.join(meta['cpu']['flags'])})",
        "",
        f"A tiny 3-D net on a 1x{SIDE}x{SIDE}x{SIDE} float32 volume ({SIDE**3 * 4 / 2**20:.0f} MB a copy), batch "
        f"{BATCH}; peak RSS (VmHWM, reset after a warm-up) above what the process held before `occlens.explain`, "
        "in MB and in copies of the volume.",
        "",
        "| engine | patch | stride | windows | peak MB | peak in copies | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['engine']} | {r['patch']} | {r['stride']} | {r['windows']} | {r['peak_above_start_mb']:.0f} | "
            f"{r['peak_in_copies']:.2f} | {r['seconds']:.1f} |"
            for r in rows
        ),
        "",
        "Largest over fewest windows: " + ", ".join(f"{k} {v:.2f}x" for k, v in growth.items()),
    ]
    (RESULTS / "volume_windows_memory-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
