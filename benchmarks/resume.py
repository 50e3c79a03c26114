"""What resuming a finished dataset run of N images costs before any work and before the report: list the
dataset, read the manifest, give each image its stem, and find every recorded image's files.

    python benchmarks/resume.py --images 50000

Makes, in a temporary folder, an ImageFolder of N empty ``.png`` files in 100 classes and a run's DIR
whose manifest records all of them as explained, with their (empty) ``.json``, ``.npz`` and ``.jpg``
files: nothing is decoded or read on resume, only listed. Times each step as :func:`occlens.app.runs.run_dataset`
runs it (best of ``--repeat``), and the same file check done by one ``stat`` per file, as occlens did
before. Writes ``results/resume-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        keys = [f"c{i % 100:02d}/{i:06d}.png" for i in range(args.images)]
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
        steps["list the dataset"], dataset = best(args.repeat, lambda: list_dataset(data, exclude=out))
        with Manifest(out) as m:
            steps["read the manifest"], recorded = best(args.repeat, m.records)
        taken = {k: r.stem for k, r in recorded.items()}
        steps["stems"], stems = best(args.repeat, lambda: output_stems([i.key for i in dataset.items], taken))
        images = out / "images"
        steps["list DIR/images"], present = best(args.repeat, lambda: files_under(images))
        steps["check every image"], done = best(
            args.repeat, lambda: sum(finished(recorded.get(k), present, "mistakes") for k in stems)
        )
        assert done == args.images
        stat_s, stat_done = best(args.repeat, lambda: sum(
            all((images / (r.stem + s)).is_file() for s in RUN_SUFFIXES) for r in recorded.values()))  # fmt: skip
        assert stat_done == args.images
    total = sum(steps.values())
    meta = {"images": args.images, "cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat(),
            "load_average": round(os.getloadavg()[0], 2), "total_s": round(total, 2),
            "one_stat_per_file_s": round(stat_s, 2)}  # fmt: skip
    lines = ["| step | s |", "|---|---:|", *(f"| {k} | {v:.2f} |" for k, v in steps.items()),
             f"| **total** | {total:.2f} |", "",
             f"the same files checked by one stat per file instead (occlens before): {stat_s:.2f} s"]  # fmt: skip
    md = "\n".join(lines)
    print(f"{json.dumps(meta)}\n\n{md}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resume-cpu.json").write_text(json.dumps({"meta": meta, "steps": steps}, indent=1))
    (RESULTS / "resume-cpu.md").write_text(f"{json.dumps(meta)}\n\n{md}\n")


if __name__ == "__main__":
    main()
