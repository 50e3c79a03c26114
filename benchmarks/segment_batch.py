"""A segmenter's dense CPU run by batch size: wall, CPU and system (kernel) seconds, and the memory faulted in.

    nice -n 10 python -W ignore benchmarks/segment_batch.py lraspp_mobilenet_v3_large 256 4,16,32,4,16 --threads 1

One torchvision segmenter (random weights, 21 classes), one segment target (the class predicted most on the
clean image), window 16 at ``--stride``, ``engine="dense"``, one warm-up at batch 4, then one call per batch
size in the order given. The megabytes of minor page faults per window show what glibc's handling of large
freed blocks costs (see ``occlens.engines.memory``): where even a batch of 4 faults most of a copy's memory in
again, small batches save little and bigger ones share the per-call work. This is why the automatic CPU batch
of a model with a dense output is ``DENSE_AUTO_BATCH``. ``--profile`` shows where one call's time goes instead
(the model's forward, the target's scoring). For tuning, not a result table: the lines it printed
are in ``benchmarks/results/segment_batch-cpu.txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import time

import torch
import torchvision

import occlens
from occlens.targets import segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("size", type=int)
    ap.add_argument("batches")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--profile", action="store_true", help="profile one call at each batch (cProfile, top 25)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None, weights_backbone=None, num_classes=21).eval()
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cls = int(model(image[None])["out"][0].argmax(0).flatten().bincount().argmax())
    target, grid = segment(cls), dict(patch=16, stride=args.stride, engine="dense")
    windows = occlens.explain(model, image, target=target, batch_size=4, **grid).windows  # warm-up
    for batch in (int(b) for b in args.batches.split(",")):
        if args.profile:  # where one call's time goes: the model's forward against the target's scoring
            profile = cProfile.Profile()
            profile.runcall(occlens.explain, model, image, target=target, batch_size=batch, **grid)
            pstats.Stats(profile).sort_stats("cumtime").print_stats(25)
            continue
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        occlens.explain(model, image, target=target, batch_size=batch, **grid)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        system = after.ru_stime - before.ru_stime
        faulted = (after.ru_minflt - before.ru_minflt) * resource.getpagesize() / 2**20 / windows
        print(f"{args.model} {args.size} b{batch:>3} windows {windows}: wall {wall:6.2f} "
              f"cpu {after.ru_utime - before.ru_utime + system:6.2f} sys {system:6.2f} "
              f"MB faulted/window {faulted:7.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
