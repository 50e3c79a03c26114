"""What bf16 and fp16 autocast cost on this CPU, against fp32: the measurement behind occlens's precision check.

    python benchmarks/cpu_precision.py --models resnet18 --size 160 --batch 32

Per model: the CPU's instruction sets and oneDNN's own answer (``occlens.models.forward.cpu_has_native``),
then one warm batched forward pass per precision (best of ``--rounds``), as the dense engine runs it
(channels-last input, autocast), and the ratio to fp32. Where the check says "emulated", occlens runs
fp32 instead of the asked precision, with a warning.
"""

from __future__ import annotations

import argparse
import time

import torch
from incremental_speed import build_model  # benchmarks/ is the script's own folder

from occlens.core.checks import PRECISIONS
from occlens.models.forward import cpu_has_native, make_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    flags = [n[4:-10] for n in dir(torch.cpu) if n.startswith("_is_") and getattr(torch.cpu, n)()]
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, instruction sets: {', '.join(flags)}")  # fmt: skip
    for p in ("bf16", "fp16"):
        print(f"{p}: {'native' if cpu_has_native(p) else 'emulated'} (occlens.models.forward.cpu_has_native)")
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for name in args.models.split(","):
        model = build_model(name, "cpu")
        times = {}
        for precision in PRECISIONS:
            forward = make_forward(model, torch.device("cpu"), True, precision, False)
            with torch.inference_mode():
                forward(x)  # warm-up
                best = float("inf")
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    forward(x)
                    best = min(best, time.perf_counter() - start)
            times[precision] = best
        row = ", ".join(f"{p} {t:.3f} s ({t / times['fp32']:.2f}x fp32)" for p, t in times.items())
        print(f"{name}, batch {args.batch} at {args.size}²: {row}", flush=True)


if __name__ == "__main__":
    main()
