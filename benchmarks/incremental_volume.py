"""Seconds to explain a 64³ volume with a small 3-D ResNet: the exact incremental engine against the dense one,
beside the incremental engine's MAC bound computed from the traced graph.

* dense: ``occlens.explain(model, occlens.Volume(x), patch=16, stride=8, engine="dense")`` (343 windows);
* incremental: the same with ``engine="incremental"`` (``occlens.engines.incremental_volume``);
* auto: ``engine="auto"``, once, to record what it picks.

The MAC bound is ``volume_cost(plan).mac_bound``: the ``Conv3d`` and ``Linear`` multiply-accumulates of one dense
forward pass over those the plan recomputes per window (pooling, batch norm and copies count nothing), the
speedup exact incremental inference cannot beat by doing less arithmetic. ``bound_over_speedup`` is the bound over
the measured speedup (the issue's target: within 1.3x). On a shared machine wall times swing by 2x and more
between rounds, so the process's CPU time (``time.process_time``, both threads) is recorded beside them, and the
median of the per-round ratios. The maps of both engines are checked to agree (1e-4)
before any time is written. Each engine runs once per round, ``REPEATS`` rounds interleaved in one process, the
best time kept; the load average (``os.getloadavg``) is recorded before and after.

    nice -n 10 python benchmarks/incremental_volume.py   # writes benchmarks/results/incremental_volume-cpu.{json,md}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from meta import meta

RESULTS = Path(__file__).resolve().parent / "results"
SIDE, PATCH, STRIDE = 64, 16, 8
REPEATS = 3


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout)
        self.conv2, self.bn2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout)
        self.short = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


def small_resnet() -> nn.Module:
    """A 3-D ResNet: stem (Conv3d 8, BN, ReLU, MaxPool3d 3/2), two residual stages (8, 16 stride 2), global pool,
    linear; random weights and batch-norm statistics, eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d(3, 2, 1),
        Residual(8, 8), Residual(8, 16, stride=2), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 2),
    )  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def main() -> None:
    import occlens
    from occlens.core.grid import VolumeGrid
    from occlens.engines.incremental_volume import plan_volume, volume_cost

    torch.set_num_threads(2)
    model = small_resnet()
    x = torch.rand(1, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    volume = occlens.Volume(x)
    grid = VolumeGrid.build(SIDE, SIDE, SIDE, PATCH, STRIDE)
    with torch.inference_mode():
        plan = plan_volume(model, x, grid, model(x[None]))
    cost = volume_cost(plan)
    kinds = [s.kind for s in plan.steps]
    load_before = os.getloadavg()

    def run(engine: str):
        return occlens.explain(model, volume, patch=PATCH, stride=STRIDE, engine=engine, progress=False)

    run("incremental")  # warm-up (and the kernels' first calls)
    times: dict = {"dense": [], "incremental": []}
    cpu_times: dict = {"dense": [], "incremental": []}
    results: dict = {}
    for _ in range(REPEATS):
        for name in times:
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = run(name)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    dense, inc = results["dense"], results["incremental"]
    assert inc.engine == "incremental" and dense.engine == "dense"
    gap = float(np.abs(inc.delta - dense.delta).max())
    assert gap < 1e-4, gap
    auto = run("auto")
    load_after = os.getloadavg()
    t_dense, t_inc = min(times["dense"]), min(times["incremental"])
    speedup = t_dense / t_inc
    cpu_speedup = min(cpu_times["dense"]) / min(cpu_times["incremental"])
    paired = float(np.median([d / i for d, i in zip(times["dense"], times["incremental"], strict=True)]))
    row = {
        "volume": [1, SIDE, SIDE, SIDE], "patch": PATCH, "stride": STRIDE, "windows": grid.size,
        "dense_s": t_dense, "incremental_s": t_inc, "all_times_s": times, "all_cpu_times_s": cpu_times,
        "speedup": speedup, "cpu_time_speedup": cpu_speedup, "median_round_speedup": paired,
        "dense_macs_per_window": cost.dense_macs, "incremental_macs_per_window": cost.incremental_macs,
        "mac_bound": cost.mac_bound, "bound_over_speedup": cost.mac_bound / speedup,
        "bound_over_cpu_time_speedup": cost.mac_bound / cpu_speedup,
        "predicted_speedup": cost.predicted_speedup("cpu"), "auto_picked": auto.engine, "max_delta_gap": gap,
        "dense_batch": dense.batch_size, "incremental_batch": inc.batch_size,
        "steps": {k: kinds.count(k) for k in sorted(set(kinds))},
    }  # fmt: skip
    print(row, flush=True)
    info = meta(threads=torch.get_num_threads(), repeats=REPEATS, load_before=load_before, load_after=load_after)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "incremental_volume-cpu.json").write_text(json.dumps({"meta": info, "rows": [row]}, indent=1) + "\n")
    lines = [
        f"`{info['command']}`, {info['date']}; {info['cpu']['model']} ({', '.join(info['cpu']['flags'])}), "
        f"{info['threads']} threads; best of {REPEATS} interleaved rounds; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (a shared machine)",
        "",
        f"A small 3-D ResNet (random weights) on a 1x{SIDE}³ volume, window {PATCH}³, stride {STRIDE}: "
        f"{grid.size} windows; the same δL from both engines (checked to 1e-4, got {gap:.1e}).",
        "",
        "| dense s | incremental s | speedup (wall; CPU time; median round) | MAC bound | bound / speedup | auto |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {t_dense:.2f} | {t_inc:.2f} | {speedup:.2f}x; {cpu_speedup:.2f}x; {paired:.2f}x | {cost.mac_bound:.2f}x | "
        f"{cost.mac_bound / speedup:.2f} | {auto.engine} |",
    ]
    (RESULTS / "incremental_volume-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
