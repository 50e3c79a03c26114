"""Throughput of ``occlens run --ray`` with 1 and 2 Ray workers, and of the plain run, on this machine.

    python benchmarks/ray_run.py --images 200                  # ~5 min on 2 CPU cores
    python benchmarks/ray_run.py --images 200 --workers 1,2,4  # other worker counts

The workload of ``benchmarks/dataset_run.py``: an ImageFolder of N random 64 x 64 PNGs in 10 classes (a
fifth in another class's folder: the mistakes, which get figures), a tiny TorchScript CNN (32 x 32
input), ``--patch 8`` (16 windows). Each configuration runs ``python -m occlens run`` as a user does,
into a fresh folder, on the CPU; ``--shared-fs`` adds a run whose Ray workers write into DIR themselves.
Reported per run: the wall time of the command (Python and Ray start-up and the report included) and, for
Ray, the images/s from the first worker's start to the end, as the run itself prints it. Afterwards every
run's npz and JPEG files are compared byte for byte with the first's.
Writes ``results/ray_run-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from dataset_run import make
from meta import meta as run_meta  # benchmarks/ is the script's own folder

RESULTS = Path(__file__).parent / "results"
ONCE_STARTED = re.compile(r"once a worker had started, ([0-9.]+) images/s \(start-up ([0-9.]+) s\)")


def run(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"occlens run failed ({proc.returncode}):\n{proc.stderr}")
    return seconds, proc.stdout


def same_files(a: Path, b: Path) -> bool:
    """The npz and JPEG files of two output folders are byte-identical (JSON holds timings; a figure's panels
    are placed as in its worker's first figure)."""
    kinds = (".npz", ".jpg")
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.suffix in kinds)
    theirs = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.suffix in kinds)
    return names == theirs and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run, comma-separated")
    parser.add_argument("--plain-workers", type=int, default=2, help="--workers of the plain run (-1: none)")
    parser.add_argument("--shared-fs", action="store_true", help="add a run of the most workers with --shared-fs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, model = make(Path(tmp), args.images)
        base = [sys.executable, "-m", "occlens", "run", str(data), "--model", str(model), "--patch", "8",
                "--device", "cpu"]  # fmt: skip
        counts = [int(n) for n in args.workers.split(",")]
        configs = [(f"--ray --workers {n}", ["--ray", "--workers", str(n)]) for n in counts]
        if args.shared_fs:
            n = max(counts)
            configs.append((f"--ray --workers {n} --shared-fs", ["--ray", "--workers", str(n), "--shared-fs"]))
        if args.plain_workers >= 0:
            configs.append((f"plain --workers {args.plain_workers}", ["--workers", str(args.plain_workers)]))
        outs = []
        for name, extra in configs:
            out = Path(tmp) / f"out{len(outs)}"
            load = os.getloadavg()[0]
            seconds, stdout = run([*base, "--out", str(out), *extra])
            found = ONCE_STARTED.search(stdout)
            rows.append(
                {
                    "run": name,
                    "images": args.images,
                    "wall_s": round(seconds, 1),
                    "images_per_s_wall": round(args.images / seconds, 2),
                    "images_per_s_once_started": float(found[1]) if found else None,
                    "startup_s": float(found[2]) if found else None,
                    "load_average_before": round(load, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            outs.append(out / "images")
        identical = all(same_files(outs[0], o) for o in outs[1:])
    meta = {
        "workload": f"{args.images} random 64x64 PNGs, tiny TorchScript CNN (32x32 input), --patch 8, --device cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "date": datetime.date.today().isoformat(),
        "npz_and_jpg_identical_across_runs": identical,
    }
    meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
    header = "| run | images | wall s | images/s (wall) | images/s (once started) | start-up s | load avg before |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["run"], r["images"], r["wall_s"], r["images_per_s_wall"], r["images_per_s_once_started"],
                 r["startup_s"], r["load_average_before"]]  # fmt: skip
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    md = "\n".join(lines)
    print(f"\n{json.dumps(meta)}\n\n{md}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_run-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS / "ray_run-cpu.md").write_text(f"{json.dumps(meta)}\n\n{md}\n")


if __name__ == "__main__":
    main()
