"""Where the incremental engine spends its time, next to the dense engine (for tuning, not a result table).

    python benchmarks/incremental_profile.py --device cuda --models resnet50,vgg16
    python benchmarks/incremental_profile.py --device cpu --ops --models resnet50,resnet18,vgg16

For each model (224 x 224, window 16, stride 8, fp32): warm runs of both engines with cuDNN's
autotuner on and off, then one profiled incremental run: the top operators by self device time
and by self CPU time, and the number of kernel launches.

``--ops``: instead, the aten operations one warm incremental run issues (counted below autograd, as a
GPU would launch them; views included), per run and per batch of windows, for the plan as the CPU
and as a GPU would group the windows; the time spent in aten ops against the run's wall time (the
rest is the Python layer); and what ``engine="auto"`` costs to decide, on a first image (trace and
plan) and on a second one of the same shape (the kept plan), next to a whole dense explanation.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from incremental_speed import build_model, timed  # benchmarks/ is the script's own folder

from occlens.core.fill import baseline
from occlens.core.grid import Grid
from occlens.core.targets import class_scores
from occlens.engines import choice, incremental
from occlens.engines.dense import Dense
from occlens.engines.memory import auto_batch_size
from occlens.models.forward import make_forward


def seconds(fn, device: torch.device) -> float:
    return timed(fn, str(device))[1]


def workload(name: str, device: torch.device):
    """The model, a 224 x 224 random image, its grid of 729 windows (16, stride 8), the gray fill and its scores."""
    model = build_model(name, str(device))
    x = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    grid = Grid.build(224, 224, 16, 8)
    with torch.inference_mode():
        scores = model(x[None])
    return model, x, grid, baseline(x, "gray"), scores


def profile(name: str, device: torch.device, rows: int = 15) -> None:
    model, x, grid, fill, scores = workload(name, device)
    forward = make_forward(model, device, True, "fp32", False)
    dense_batch = auto_batch_size(grid.size, x, device, None)
    plan = incremental.build(model, x, grid, scores)
    batch = incremental.batch_size(plan, grid.size)
    run_incremental = partial(
        incremental.Incremental(plan, batch).occluded_scores, None, fill, class_scores([0], "logits")
    )
    run_dense = partial(Dense(forward, grid, dense_batch).occluded_scores, x, fill, class_scores([0], "logits"))
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


def count_ops(name: str, device: torch.device) -> None:
    import time
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    import occlens

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    model, x, grid, fill, scores = workload(name, device)
    for kind in ("cpu", "cuda"):
        group, batch = incremental.GROUP_SIZE[kind], incremental.MAX_BATCH[kind]
        plan = incremental.build(model, x, grid, scores, group_size=group)
        run = partial(incremental.Incremental(plan, batch).occluded_scores, None, fill, class_scores([0], "logits"))
        run()  # warm: makes what the plan keeps
        counter = Count()
        with counter:
            run()
        total = sum(counter.ops.values())
        batches = sum(-(-len(p.windows) // batch) for p in plan.parts)
        top = ", ".join(f"{k.removeprefix('aten.')} {v}" for k, v in counter.ops.most_common(6))
        print(f"{name}: {kind} grouping ({len(plan.parts)} parts, batch {batch}): {total} aten ops per run, "
              f"{total / batches:.0f} per batch ({batches} batches); most: {top}", flush=True)  # fmt: skip
    plan = incremental.build(model, x, grid, scores)
    run = partial(
        incremental.Incremental(plan, incremental.batch_size(plan, grid.size)).occluded_scores,
        None,
        fill,
        class_scores([0], "logits"),
    )
    run()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    wall = time.perf_counter() - start
    aten = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6
    print(f"{name}: one profiled run {wall:.2f} s: aten ops {aten:.2f} s, the Python layer and profiler "
          f"{wall - aten:.2f} s ({(wall - aten) / wall:.0%})", flush=True)  # fmt: skip
    decide = {}
    for which, image in (("first image", x), ("second image", torch.rand_like(x))):
        if which == "first image" and hasattr(incremental, "_layouts"):  # (older trees keep no plans)
            incremental._layouts.clear()
        with torch.inference_mode():
            s = model(image[None])
        start = time.perf_counter()
        chosen = choice.select("auto", model, image, grid, s, auto_batch_size(grid.size, image, device, None), False)
        decide[which] = (time.perf_counter() - start, chosen.name)
    start = time.perf_counter()
    occlens.explain(model, x, patch=16, stride=8, engine="dense")
    dense = time.perf_counter() - start
    print(f"{name}: auto's decision: first image {decide['first image'][0]:.3f} s, second image "
          f"{decide['second image'][0]:.3f} s (-> {decide['second image'][1]}); a whole dense explanation "
          f"{dense:.2f} s", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet50,vgg16")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--ops", action="store_true", help="count the aten ops and time auto's decision instead")
    args = ap.parse_args()
    for name in args.models.split(","):
        (count_ops if args.ops else partial(profile, rows=args.rows))(name, torch.device(args.device))


if __name__ == "__main__":
    main()
