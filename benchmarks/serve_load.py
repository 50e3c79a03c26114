"""A bounded load test of ``occlens serve`` on loopback, and its time to the first coarse map vs the exact map.

    python benchmarks/serve_load.py                                   # ~2 min on 2 CPU cores
    python benchmarks/serve_load.py --clients 8 --seconds 60 --rounds 3

Part 1 (load): ``python -m occlens serve --port 0`` as a user starts it, with a tiny TorchScript CNN
(48 x 64 input, 7 classes, ``--patch 8``: 48 windows) on the CPU; ``--clients`` threads, each with its own
keep-alive connection, POST ``/api/explain`` with one of 16 random 96 x 128 PNGs, one request after another,
for ``--seconds``. Reported: requests/s, p50/p95/max latency, errors (any answer but 200), and the server's
resident memory (``/proc/PID/status`` VmRSS) after a warm-up and at the end, and its growth per 1,000 requests
over the second half of the run (a leak grows it; a warm allocator does not).

Part 2 (first map): a server with the default model (EfficientNet-Lite0, ``--device cpu``), each bundled photo
streamed from ``/api/explain/stream`` with the default settings (window 16, 196 windows): the seconds from
sending the request to the ``coarse`` event (the anytime drill-down's first pass, about an eighth of the
windows, the rest interpolated) and to the ``exact`` event, per photo and round; the first round of each
photo warms the model and is reported but left out of the medians.

Writes ``results/serve_load-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder
from PIL import Image
from served import Served, multipart

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TinyConvNet  # noqa: E402

from occlens.core.samples import samples  # noqa: E402

NAMES = ["tabby", "tiger cat", "Egyptian cat", "fox", "lynx", "dingo", "espresso"]
SIZE = (48, 64)


def tiny_model(folder: Path) -> Path:
    net = TinyConvNet(classes=len(NAMES))
    torch.jit.trace(net, torch.rand(1, 3, *SIZE)).save(str(folder / "tiny.pt"))
    description = {"input_size": list(SIZE), "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1], "labels": NAMES}
    (folder / "tiny.json").write_text(json.dumps(description))
    return folder / "tiny.pt"


def pngs(n: int = 16) -> list[bytes]:
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def load(served: Served, clients: int, seconds: float, images: list[bytes]) -> dict:
    bodies = [multipart(d) for d in images]
    latencies: list[tuple[float, float]] = []  # (finish time, seconds)
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
        n = i
        while time.perf_counter() < stop:
            body, kind = bodies[n % len(bodies)]
            n += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/explain", body=body, headers={"Content-Type": kind})
                r = conn.getresponse()
                payload = r.read()
                ok = r.status == 200 and len(json.loads(payload)["delta"]) == SIZE[0] // 8
            except Exception as err:  # counted, and the connection made again
                ok, payload = False, repr(err).encode()
                conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
            done = time.perf_counter()
            with lock:
                if ok:
                    latencies.append((done - start, done - t))
                else:
                    errors.append(payload[:200].decode(errors="replace"))

    memory = []
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        with lock:
            memory.append((time.perf_counter() - start, len(latencies), served.rss_mb()))
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    seconds_each = sorted(s for _, s in latencies)
    half = [(n, rss) for t, n, rss in memory if t >= seconds / 2]
    slope = float(np.polyfit([n for n, _ in half], [r for _, r in half], 1)[0]) * 1000 if len(half) > 2 else None
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(seconds_each), 1),
        "p95_ms": round(1000 * seconds_each[int(0.95 * (len(seconds_each) - 1))], 1),
        "max_ms": round(1000 * seconds_each[-1], 1),
        "errors": len(errors),
        "error_examples": errors[:3],
        "rss_after_warmup_mb": None,
        "rss_end_mb": round(memory[-1][2], 1),
        "rss_growth_mb_per_1000_requests_second_half": None if slope is None else round(slope, 2),
    }


def first_maps(served: Served, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for s in samples():
            body, kind = multipart(s.path.read_bytes())
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=300)
            t = time.perf_counter()
            conn.request("POST", "/api/explain/stream", body=body, headers={"Content-Type": kind})
            response = conn.getresponse()
            seen, buffer = {}, b""
            while "exact" not in seen:
                chunk = response.read1(65536)
                if not chunk:
                    sys.exit(f"the stream of {s.name} ended before the exact map: {buffer[-300:]!r}")
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    kind_line = block.split(b"\n", 1)[0].decode()
                    event = kind_line.removeprefix("event: ")
                    if event in ("coarse", "exact", "error") and event not in seen:
                        seen[event] = time.perf_counter() - t
                        if event == "coarse":
                            seen["scored"] = json.loads(block.split(b"\n", 1)[1][6:])["meta"]["anytime"]
                    if event == "error":
                        sys.exit(f"{s.name}: {block.decode()}")
            conn.close()
            rows.append({"round": r, "photo": s.name, "coarse_s": round(seen["coarse"], 3),
                         "exact_s": round(seen["exact"], 3), "coarse_windows": seen["scored"]["scored"],
                         "windows": seen["scored"]["windows"]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the bundled photos in part 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp))
        served = Served(["--model", str(model), "--device", "cpu", "--patch", "8"])
        try:
            images = pngs()
            load(served, 2, 3, images)  # warm-up: the first requests load what they need
            warm = served.rss_mb()
            result = load(served, args.clients, args.seconds, images)
            result["rss_after_warmup_mb"] = round(warm, 1)
        finally:
            served.close()
    served = Served(["--device", "cpu"])
    try:
        rows = first_maps(served, args.rounds)
    finally:
        served.close()
    later = [r for r in rows if r["round"] > 0] or rows
    summary = {
        "coarse_s_median": round(statistics.median(r["coarse_s"] for r in later), 3),
        "exact_s_median": round(statistics.median(r["exact_s"] for r in later), 3),
    }
    summary["exact_over_coarse"] = round(summary["exact_s_median"] / summary["coarse_s_median"], 2)
    out = {
        "meta": run_meta(),
        "workload": f"load: tiny TorchScript CNN {SIZE[0]}x{SIZE[1]}, --patch 8 (48 windows), 96x128 PNG uploads, "
        f"{args.clients} clients for {args.seconds:g} s; first map: efficientnet-lite0, defaults (196 windows), "
        f"the {len(samples())} bundled photos x {args.rounds} rounds (round 0 left out of the medians)",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "load": result,
        "first_map": summary,
        "first_map_rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load-cpu.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# occlens serve: load and first map (CPU)",
        "",
        f"{out['workload']}; {out['cpu_count']} CPU cores, torch {out['torch']}, {out['date']}.",
        "",
        "| clients | s | requests | requests/s | p50 ms | p95 ms | max ms | errors | RSS after warm-up MB | RSS end MB "
        "| RSS growth MB / 1000 requests (2nd half) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| {clients} | {seconds} | {requests} | {requests_per_s} | {p50_ms} | {p95_ms} | {max_ms} | {errors} | "
        "{rss_after_warmup_mb} | {rss_end_mb} | {rss_growth_mb_per_1000_requests_second_half} |".format(**result),
        "",
        "| round | photo | coarse map s | exact map s | windows in the coarse pass |",
        "|---:|---|---:|---:|---:|",
        *["| {round} | {photo} | {coarse_s} | {exact_s} | {coarse_windows} of {windows} |".format(**r) for r in rows],
        "",
        f"Median (rounds 1+): coarse map {summary['coarse_s_median']} s, exact map {summary['exact_s_median']} s "
        f"({summary['exact_over_coarse']}x).",
        "",
    ]
    (RESULTS / "serve_load-cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
