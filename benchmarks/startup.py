"""How fast the command answers when it has nothing to compute: ``occlens --help``, ``--version``,
``explain --help`` and a usage error, each in a fresh process, timed from start to exit, with its peak RSS.

    python benchmarks/startup.py --rounds 7 --tree after=src --tree before=/path/to/old/src

Each ``--tree LABEL=SRC`` is a source tree of occlens (its ``src`` folder, put first on PYTHONPATH); every
command runs as the installed ``occlens`` script runs it (the entry point ``occlens.cli:command``; another
with ``LABEL=SRC@MODULE:FUNCTION``), through this Python, without the script's wrapper. One untimed round
first (it writes the bytecode caches), then ``--rounds`` rounds, the trees and commands interleaved in each,
so that a busy moment of a shared machine falls on all of them alike; the median of the rounds is reported,
with the fastest and slowest. A separate, untimed run of each says whether the command imported torch.
The peak RSS is the process's own (``wait4``'s ``ru_maxrss``). Writes ``results/startup-cpu.json`` and
``.md`` (``--name`` another name), with the command line, the date, the CPU and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meta import meta as run_meta  # benchmarks/ is the script's own folder

RESULTS = Path(__file__).parent / "results"
ENTRY = "occlens.cli:command"  # [project.scripts] in pyproject.toml
COMMANDS = {
    "occlens --help": ["--help"],
    "occlens --version": ["--version"],
    "occlens explain --help": ["explain", "--help"],
    "usage error (explain x.png --engine warp)": ["explain", "x.png", "--engine", "warp"],
}
LAUNCH = "import sys\nfrom {module} import {function}\nsys.exit({function}())\n"
PROBE = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['OCCLENS_STARTUP_PROBE'], 'w').write(str('torch' in sys.modules)))\n"
)


def parse_tree(text: str) -> tuple[str, Path, str]:
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=SRC or LABEL=SRC@MODULE:FUNCTION, got {text!r}")
    src, _, entry = rest.partition("@")
    if not (Path(src) / "occlens" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{src} holds no occlens package (give the src folder of a checkout)")
    return label, Path(src).resolve(), entry or ENTRY


def launch(src: Path, entry: str, argv: list[str], probe: str | None = None) -> tuple[float, int, int]:
    """(seconds from start to exit, peak RSS in bytes, exit status) of one command in a fresh process."""
    module, function = entry.split(":")
    code = (PROBE if probe else "") + LAUNCH.format(module=module, function=function)
    env = {**os.environ, "PYTHONPATH": str(src)}
    if probe:
        env["OCCLENS_STARTUP_PROBE"] = probe
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return seconds, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss: kilobytes on Linux


def imports_torch(src: Path, entry: str, argv: list[str]) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        probe = str(Path(tmp) / "probe")
        launch(src, entry, argv, probe)
        return Path(probe).read_text() == "True"


def versions(trees) -> dict:
    """Each tree's commit (the occlens measured, before and after), and the platform."""
    out = {"platform": platform.platform()}
    for label, src, _ in trees:
        head = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        out[f"occlens ({label})"] = (head or "not a git checkout") + (" + uncommitted changes" if dirty else "")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=parse_tree, action="append", required=True, metavar="LABEL=SRC")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="startup-cpu", help="results/NAME.json and .md")
    parser.add_argument("--note", default="", help="a line about the machine, kept with the results")
    args = parser.parse_args()
    trees = args.tree
    for _, src, entry in trees:  # untimed: bytecode caches written, files in the page cache
        for argv in COMMANDS.values():
            launch(src, entry, argv)
    times: dict = {(t[0], c): [] for t in trees for c in COMMANDS}
    peaks: dict = {(t[0], c): [] for t in trees for c in COMMANDS}
    codes: dict = {}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            for label, src, entry in trees:
                seconds, peak, code = launch(src, entry, argv)
                times[label, name].append(seconds)
                peaks[label, name].append(peak)
                codes[label, name] = code
    rows = []
    for label, src, entry in trees:
        for name, argv in COMMANDS.items():
            t, p = times[label, name], peaks[label, name]
            rows.append({"tree": label, "entry": entry, "command": name, "argv": argv, "exit_code": codes[label, name],
                         "median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                         "max_s": round(max(t), 3), "median_peak_rss_mb": round(statistics.median(p) / 2**20, 1),
                         "max_peak_rss_mb": round(max(p) / 2**20, 1), "imports_torch": imports_torch(src, entry, argv),
                         "rounds": len(t)})  # fmt: skip
    meta = run_meta(load_average=[round(v, 2) for v in os.getloadavg()], note=args.note, trees=versions(trees),
                    target="<= 0.5 s and <= 100 MB")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"`{meta['command']}`, {meta['date']}; {meta['cpu']['model']} "
             f"({', '.join(meta['cpu']['flags']) or 'no AVX2'}), {meta['cpu_count']} cores"
             + (f"; {args.note}" if args.note else ""), "",
             f"median of {args.rounds} rounds (fastest-slowest); peak RSS of the process; target {meta['target']}",
             "", "| tree | command | s | MB | torch imported |", "|---|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['tree']} | {r['command']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
                     f"{r['median_peak_rss_mb']:.0f} | {'yes' if r['imports_torch'] else 'no'} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
