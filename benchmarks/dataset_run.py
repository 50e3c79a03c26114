"""Throughput of ``occlens run``: N small images, a tiny TorchScript CNN, the command as a user runs it.

    python benchmarks/dataset_run.py --images 1000 --workers 2

Makes an ImageFolder dataset of N random 64 x 64 PNGs in 10 classes and a tiny CNN (32 x 32 input,
10 classes) in a temporary folder, runs ``python -m occlens run DATA --out OUT --model tiny.pt --patch 8``
(4 x 4 windows) and prints the wall time and images/s, start-up and report included. A second run on
the same folder shows what resuming a finished run costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = 10


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32, CLASSES),
        )

    def forward(self, x):
        return self.body(x)


def make(root: Path, n: int) -> tuple[Path, Path]:
    torch.jit.trace(Tiny().eval(), torch.rand(1, 3, 32, 32)).save(str(root / "tiny.pt"))
    description = {"input_size": [32, 32], "resize": None, "labels": [f"class{c}" for c in range(CLASSES)]}
    (root / "tiny.json").write_text(json.dumps(description))
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "data" / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root / "data", root / "tiny.pt"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"occlens run failed ({proc.returncode}):\n{proc.stderr}")
    print(proc.stdout.splitlines()[0])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, model = make(Path(tmp), args.images)
        argv = [sys.executable, "-m", "occlens", "run", str(data), "--out", str(Path(tmp) / "out"),
                "--model", str(model), "--patch", "8", "--workers", str(args.workers), "--device", "cpu"]  # fmt: skip
        first = timed(argv)
        print(f"{args.images} images, --workers {args.workers}: {first:.1f} s, {args.images / first:.2f} images/s")
        again = timed(argv)
        print(f"re-run with nothing to do: {again:.1f} s")


if __name__ == "__main__":
    main()
