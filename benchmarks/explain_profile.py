"""Where one ``occlens.explain`` call spends its time (for tuning, not a result table).

    python benchmarks/explain_profile.py --device cuda --runs resnet18:fp32,vgg16:bf16

Per MODEL:PRECISION (224 x 224, window 16, stride 8): three warm calls timed, then one call
under cProfile (top functions by cumulative time) and one under torch.profiler (top operators
by self device time on CUDA, self CPU time on the CPU).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from incremental_speed import build_model  # benchmarks/ is the script's own folder

import occlens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", default="resnet18:fp32,vgg16:bf16")
    ap.add_argument("--rows", type=int, default=14)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    for run in args.runs.split(","):
        name, precision = run.split(":")
        model = build_model(name, args.device)
        image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))

        def call(model=model, image=image, precision=precision):
            occlens.explain(model, image, patch=16, stride=8, precision=precision)
            if cuda:
                torch.cuda.synchronize()

        times = []
        for _ in range(4):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(f"{name} {precision}: explain {', '.join(f'{t:.3f}' for t in times)} s", flush=True)
        profile = cProfile.Profile()
        profile.runcall(call)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.rows)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            call()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows), flush=True)


if __name__ == "__main__":
    main()
