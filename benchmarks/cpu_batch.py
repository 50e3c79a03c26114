"""The dense engine's CPU time by batch size: wall, user and system (kernel) seconds, page faults.

    python benchmarks/cpu_batch.py --models efficientnet-lite0,resnet18 --batches 4,32

Per model (224 x 224, window 16, stride 8, fp32, engine="dense"), one warm call per batch size,
interleaved. System time and minor page faults show what glibc's handling of large freed tensors
costs: allocations over its mmap threshold (at most 32 MB) go back to the OS when freed, and the
next batch faults every page in again. This is why the automatic CPU batch is small
(``occlens.engines.memory.CPU_AUTO_BATCH``). For tuning, not a result table.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from incremental_speed import build_model  # benchmarks/ is the script's own folder

import occlens
from occlens.engines.memory import keep_freed_blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0")
    ap.add_argument("--batches", default="4,32")
    ap.add_argument("--keep-freed", action="store_true", help="set glibc's thresholds first, as the occlens command")
    args = ap.parse_args()
    if args.keep_freed:
        print("glibc thresholds raised:", keep_freed_blocks())
    image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name in args.models.split(","):
        model = build_model(name, "cpu")
        occlens.explain(model, image, patch=16, stride=16, engine="dense")  # warm-up
        for batch in (int(b) for b in args.batches.split(",")):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            occlens.explain(model, image, patch=16, stride=8, engine="dense", batch_size=batch)
            wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            print(f"{name:<20} batch {batch:>3}: wall {wall:6.2f} s, user {after.ru_utime - before.ru_utime:6.2f} s, "
                  f"system {after.ru_stime - before.ru_stime:6.2f} s, "
                  f"minor page faults {after.ru_minflt - before.ru_minflt:>9,}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
