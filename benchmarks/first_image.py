"""How soon ``occlens run`` finishes its first image, and its whole run, on N tiny images: start-up as a user
meets it (Python, torch, the model, the worker processes).

    python benchmarks/first_image.py --tree after=src --tree before=OLD/src --rounds 3

Each ``--tree LABEL=SRC`` is a source tree of occlens (its ``src`` folder, put first on PYTHONPATH). Makes, in a
temporary folder, the dataset of ``benchmarks/dataset_run.py`` (an ImageFolder of N random 64 x 64 PNGs, a fifth
of them in another class's folder, and a tiny TorchScript CNN with 32 x 32 input), then runs
``python -m occlens run DATA --out DIR --model tiny.pt --patch 8 --device cpu`` (default workers) into a new DIR
per run, the trees interleaved in each round so that a busy moment of a shared machine falls on all of them alike.
The first image's time is when its ``STEM.json`` appears under DIR/images (polled every 10 ms; the file is
written whole, atomically, and recorded after); the total is the process's exit. Reports the median of the
rounds with the fastest and slowest, and the load average. Writes ``results/first_image-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meta import meta as run_meta  # benchmarks/ is the script's own folder

RESULTS = Path(__file__).parent / "results"


def parse_tree(text: str) -> tuple[str, Path]:
    label, sep, src = text.partition("=")
    if not sep or not label or not (Path(src) / "occlens" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=SRC, SRC an occlens checkout's src folder, got {text!r}")
    return label, Path(src).resolve()


def meta(trees: list[tuple[str, Path]]) -> dict:
    """meta.py's context (the CPU, the GPU: none used, the versions), the command line without machine paths, each
    tree's commit as the occlens version, and the load average at the end."""
    occlens = {}
    for label, src in trees:
        head = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h"], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        occlens[label] = (head or "not a git checkout") + (" + uncommitted changes" if dirty else "")
    words = [w if "=" not in w or not Path(w.partition("=")[2]).is_absolute() else f"{w.partition('=')[0]}=OLD/src"
             for w in sys.argv]  # no machine paths in the results: an absolute tree is OLD/src  # fmt: skip
    info = run_meta(load_average_at_end=[round(v, 2) for v in os.getloadavg()])
    info["command"] = " ".join(["python", *words])
    info["versions"]["occlens"] = occlens
    return info


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user + system) process ``pid`` and its children (the run's workers) have used so far (Linux
    /proc; None elsewhere)."""
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def first_and_total(src: Path, argv: list[str], out: Path, timeout: float = 600) -> tuple[float, float, float | None]:
    """(seconds to the first STEM.json under ``out``/images, seconds to the exit, the CPU seconds the run's
    processes had used when that file appeared) of one run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "occlens", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    first = cpu = None
    images = out / "images"
    while proc.poll() is None:
        if first is None and images.is_dir() and next(images.rglob("*.json"), None) is not None:
            first, cpu = time.perf_counter() - start, cpu_seconds(proc.pid)
        if time.perf_counter() - start > timeout:
            proc.kill()
            sys.exit(f"occlens run took over {timeout} s")
        time.sleep(0.01)
    total = time.perf_counter() - start
    if first is None and images.is_dir() and next(images.rglob("*.json"), None) is not None:
        first = total  # written in the last poll's interval
    if proc.returncode not in (0, 2):  # 2: some image failed (none should here)
        sys.exit(f"occlens run failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return first, total, cpu


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 2), "min_s": round(min(values), 2),
            "max_s": round(max(values), 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=parse_tree, action="append", required=True, metavar="LABEL=SRC")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="first_image-cpu", help="results/NAME.json and .md")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from dataset_run import make

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, model = make(root, args.images)
        base = ["run", str(data), "--model", str(model), "--patch", "8", "--device", "cpu"]
        firsts: dict = {label: [] for label, _ in args.tree}
        cpus: dict = {label: [] for label, _ in args.tree}
        totals: dict = {label: [] for label, _ in args.tree}
        loads: dict = {label: [] for label, _ in args.tree}
        for label, src in args.tree:  # untimed: bytecode caches written, files in the page cache
            first_and_total(src, [*base, "--out", str(root / f"warm-{label}")], root / f"warm-{label}")
        for n in range(args.rounds):
            for label, src in args.tree:
                out = root / f"{label}-{n}"
                loads[label].append(os.getloadavg()[0])
                first, total, cpu = first_and_total(src, [*base, "--out", str(out)], out)
                firsts[label].append(first)
                cpus[label].append(cpu)
                totals[label].append(total)
                print(json.dumps({"tree": label, "round": n, "first_image_s": round(first, 2), "cpu_s": cpu,
                                  "total_s": round(total, 2), "load_average": round(loads[label][-1], 2)}),
                      flush=True)  # fmt: skip
    rows = [{"tree": label, "images": args.images, "rounds": args.rounds, "first_image": summary(firsts[label]),
             "first_image_cpu": summary([c for c in cpus[label] if c is not None] or [float("nan")]),
             "total": summary(totals[label]), "load_average_before": [round(v, 2) for v in loads[label]]}
            for label, _ in args.tree]  # fmt: skip
    info = meta(args.tree)
    info["workload"] = (f"{args.images} random 64x64 PNGs (a fifth in another class's folder: their figures drawn), "
                        "a tiny TorchScript CNN (32x32 input, 10 classes), --patch 8 (16 windows), --device cpu, "
                        "default --workers")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": info, "rows": rows}, indent=1) + "\n")
    lines = [f"`{info['command']}`, {info['date']}; {info['cpu']['model']} ({', '.join(info['cpu']['flags'])}), "
             f"{info['cpu_count']} cores; {info['workload']}", "",
             f"median of {args.rounds} rounds (fastest-slowest), each a fresh process and DIR; target: the first "
             "image within 5 s. CPU s: the CPU time of the run's processes (its own and its workers') when its first "
             "image appeared: what the first image costs whatever the load (a shared machine's wall time follows it)",
             "",
             "| tree | first image s | its CPU s | whole run s | load average before each |",
             "|---|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        f, t, load = r["first_image"], r["total"], ", ".join(map(str, r["load_average_before"]))
        c = r["first_image_cpu"]
        lines.append(f"| {r['tree']} | {f['median_s']:.1f} ({f['min_s']:.1f}-{f['max_s']:.1f}) | {c['median_s']:.1f} "
                     f"({c['min_s']:.1f}-{c['max_s']:.1f}) | {t['median_s']:.1f} "
                     f"({t['min_s']:.1f}-{t['max_s']:.1f}) | {load} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
