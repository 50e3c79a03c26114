"""Where the incremental engine spends its time, next to the dense engine (for tuning, not a result table).

    python benchmarks/incremental_profile.py --device cuda --models resnet50,vgg16

For each model (224 x 224, window 16, stride 8, fp32): warm runs of both engines with cuDNN's
autotuner on and off, then one profiled incremental run: the top operators by self device time
and by self CPU time, and the number of kernel launches.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from incremental_speed import build_model, timed  # benchmarks/ is the script's own folder

from occlens.core.fill import baseline
from occlens.core.grid import Grid
from occlens.engines import incremental
from occlens.engines.dense import occluded_log_probs
from occlens.engines.memory import auto_batch_size
from occlens.models.forward import make_forward


def seconds(fn, device: torch.device) -> float:
    return timed(fn, str(device))[1]


def profile(name: str, device: torch.device, rows: int) -> None:
    model = build_model(name, str(device))
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    grid = Grid.build(224, 224, 16, 8)
    fill = baseline(x, "gray")
    with torch.inference_mode():
        scores = model(x[None])
    forward = make_forward(model, device, True, "fp32", False)
    dense_batch = auto_batch_size(grid.size, x, device, None)
    plan = incremental.build(model, x, grid, scores)
    batch = incremental.batch_size(plan, grid.size)
    run_incremental = partial(incremental.occluded_log_probs, plan, fill, [0], "logits", batch)
    run_dense = partial(occluded_log_probs, forward, x, fill, grid, [0], "logits", dense_batch)
    for bench in (True, False):
        torch.backends.cudnn.benchmark = bench
        build = seconds(partial(incremental.build, model, x, grid, scores), device)
        inc = ", ".join(f"{seconds(run_incremental, device):.3f}" for _ in range(3))
        dense = ", ".join(f"{seconds(run_dense, device):.3f}" for _ in range(3))
        print(f"{name}: cudnn.benchmark={bench} build {build:.3f} s; incremental (batch {batch}, "
              f"{len(plan.parts)} parts) {inc} s; dense (batch {dense_batch}) {dense} s", flush=True)  # fmt: skip
    torch.backends.cudnn.benchmark = True
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        seconds(run_incremental, device)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=rows))
    if device.type == "cuda":
        print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
        launches = sum(e.count for e in events if e.key in LAUNCHES)
        print(f"{name}: kernel launches in one incremental run: {launches}", flush=True)


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet50,vgg16")
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    for name in args.models.split(","):
        profile(name, torch.device(args.device), args.rows)


if __name__ == "__main__":
    main()
