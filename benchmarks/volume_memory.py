"""Peak memory of occluding a CT-sized volume (1 x 300 x 512 x 512 float32: 300 MB a copy) with the reference
3-D occlusion (occlens.core.occlude): a batch costs ``batch`` copies of the volume, whatever the number of windows.

Each configuration runs in a fresh process, which reports its peak RSS above what it held once the volume and
its fill existed (in copies of the volume). The model is a cheap one (8x average pooling and a linear layer) so
that the numbers are the occlusion's own, not a network's activations.

    python benchmarks/volume_memory.py            # writes benchmarks/results/volume_memory-cpu.{json,md}
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
SHAPE = (1, 300, 512, 512)
CONFIGS = [  # (batch size, patch): 12 and 96 windows
    (1, (100, 256, 256)),
    (4, (100, 256, 256)),
    (4, (50, 128, 128)),
]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(batch: int, patch: tuple[int, int, int]) -> dict:
    import torch
    import torch.nn as nn

    from occlens.core.fill import baseline
    from occlens.core.grid import VolumeGrid
    from occlens.core.occlude import occlusion_delta

    torch.set_num_threads(2)
    model = nn.Sequential(nn.AvgPool3d(8), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    fill = baseline(x, "gray")
    with torch.no_grad():
        model(x[None])  # the lazy layer's weights exist before the measurement
    grid = VolumeGrid.build(*SHAPE[1:], patch)
    before = rss()
    start = time.perf_counter()
    delta, _ = occlusion_delta(model, x, fill, grid, batch_size=batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    copy = x.numel() * x.element_size()
    assert delta.shape == grid.shape
    return {"batch": batch, "patch": list(patch), "windows": grid.size, "volume_mb": copy / 2**20,
            "peak_above_start_mb": (peak - before) / 2**20, "peak_in_copies": (peak - before) / copy,
            "seconds": seconds}  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), tuple(json.loads(sys.argv[3])))))
        return
    rows = []
    for batch, patch in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", str(batch), json.dumps(list(patch))],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    meta = run_meta()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "volume_memory-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"`{meta['command']}`, {meta['date']}; {meta['cpu']['model']} ({', '.join(meta['cpu']['flags'])})",
        "",
        f"Volume {'x'.join(map(str, SHAPE))} float32 ({rows[0]['volume_mb']:.0f} MB a copy); peak RSS above the "
        "volume and its fill, in MB and in copies of the volume.",
        "",
        "| batch | patch | windows | peak MB | peak in copies | seconds |",
        "|---:|---|---:|---:|---:|---:|",
        *(
            f"| {r['batch']} | {'x'.join(map(str, r['patch']))} | {r['windows']} | {r['peak_above_start_mb']:.0f} | "
            f"{r['peak_in_copies']:.2f} | {r['seconds']:.1f} |"
            for r in rows
        ),  # fmt: skip
    ]
    (RESULTS / "volume_memory-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
