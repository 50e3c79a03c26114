"""occlens against Captum and a naive loop, in one process, interleaved.

    python benchmarks/occlusion_speed.py --quick                 # a smoke run: < 1 min on 2 CPU cores
    python benchmarks/occlusion_speed.py --device cpu            # the full CPU table
    python benchmarks/occlusion_speed.py --device cuda           # the full GPU table

Workload (full): 224 x 224 image, window 16, stride 8 (729 windows), random-weight ResNet-18,
ResNet-50, VGG16 (torchvision) and the default EfficientNet-Lite0. Every method runs once
per round (again, up to 5 times, while a run takes under 0.5 s: short GPU runs), rounds
alternate methods (interleaved), and the table reports each method's best time. Peak memory
is sampled in the first round only (its 2 ms sampling thread would slow host-bound runs).
Writes ``RESULTS/occlusion_speed-DEVICE.json`` and ``.md``.

Methods: occlens default (``occlens.explain`` as a user calls it: fp32, ``engine="auto"``; the table
names the engine it ran), occlens fp32 (exact, the dense engine), occlens bf16 and fp16 (CUDA) / bf16 (CPU);
Captum ``Occlusion`` at its default ``perturbations_per_eval=1`` and at its best of
{16, 64, 256}; a naive loop with one forward pass per window; with ``--compile-models``,
occlens with ``compile=True`` (fp32 and the first reduced precision; round 1 pays the
compilation); and the model's own batched forward throughput at each precision, the limit
for any dense engine (``n_windows / images_per_s``; "time / limit" compares occlens with it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder

import occlens
from occlens.models import Normalized, load_default_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Row:
    model: str
    method: str
    seconds: float = float("inf")
    windows: int = 0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = 0.0
    max_abs_diff_vs_captum: float | None = None
    spearman_vs_fp32: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds else 0.0


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.peak, self.running = rss(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(name: str, device: str) -> torch.nn.Module:
    if name == "efficientnet-lite0":
        return load_default_model(device).module
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    return Normalized(net, IMAGENET_MEAN, IMAGENET_STD).eval().to(device)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(float)
    rb = np.argsort(np.argsort(b.ravel())).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def captum_map(model, image: torch.Tensor, target: int, patch: int, stride: int, per_eval: int) -> np.ndarray:
    from captum.attr import Occlusion

    def forward(z):
        return torch.log_softmax(model(z).float(), dim=1)

    with torch.no_grad():
        attr = Occlusion(forward).attribute(
            image[None], sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
            baselines=0.5, target=target, perturbations_per_eval=per_eval,
        )  # fmt: skip
    return -attr[0, 0].cpu().numpy()  # the window spans all channels: every channel has the same value


def naive_map(model, image: torch.Tensor, target: int, patch: int, stride: int) -> np.ndarray:
    grid = occlens.Grid.build(image.shape[1], image.shape[2], patch, stride)
    with torch.inference_mode():
        clean = torch.log_softmax(model(image[None]).double(), 1)[0, target]
        delta = np.empty(grid.size)
        for i, (top, bottom, left, right) in enumerate(grid.windows()):
            x = image.clone()
            x[:, top:bottom, left:right] = 0.5
            delta[i] = float(torch.log_softmax(model(x[None]).double(), 1)[0, target] - clean)  # L - L_occl
    return grid.pixel_map(delta.reshape(grid.rows, grid.cols))


def throughput(model, device: str, batch: int, seconds: float = 3.0, precision: str = "fp32") -> float:
    """The model's own images/s on one same-shaped channels-last batch (cuDNN autotuned), at ``precision``."""
    x = torch.rand(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None)
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        with torch.inference_mode(), autocast:
            for _ in range(2):
                model(x)
            sync(device)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model(x)
                n += batch
            sync(device)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return n / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


REPEAT_BELOW = 0.5  # a method faster than this (seconds) runs again in its round, up to REPEATS times
REPEATS = 5


def timed(fn, device: str, watch: bool):
    """``fn()``'s output, seconds, and (``watch``) its peak RSS and CUDA MB.

    Memory is sampled only when watched: the sampling thread wakes every 2 ms and takes the GIL
    from host-bound runs (short GPU runs), so rounds after the first run unwatched.
    """
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    with PeakRSS() if watch else contextlib.nullcontext() as peak:
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
    if not watch:
        return out, seconds, 0.0, 0.0
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    return out, seconds, peak.peak / 2**20, cuda


def best_of_round(fn, device: str, watch: bool):
    """:func:`timed`, repeated (unwatched) while the run is shorter than REPEAT_BELOW; the best time."""
    out, seconds, peak_rss, peak_cuda = timed(fn, device, watch)
    for _ in range(REPEATS - 1):
        if seconds >= REPEAT_BELOW:
            break
        seconds = min(seconds, timed(fn, device, False)[1])
    return out, seconds, peak_rss, peak_cuda


def bench_model(name: str, args) -> list[Row]:
    device = args.device
    model = build_model(name, device)
    image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    image_dev = image.to(device)
    patch, stride = args.patch, args.stride
    grid = occlens.Grid.build(224, 224, patch, stride)
    target = occlens.explain(model, image, patch=224).predicted
    precisions = ["bf16", "fp16"] if device.startswith("cuda") else ["bf16"]
    methods = {
        "occlens default": lambda: occlens.explain(model, image, patch=patch, stride=stride).pixel_map,
        "occlens fp32": lambda: occlens.explain(model, image, patch=patch, stride=stride, engine="dense").pixel_map,
    }
    for p in precisions:
        methods[f"occlens {p}"] = lambda p=p: (
            occlens.explain(model, image, patch=patch, stride=stride, precision=p).pixel_map
        )
    if name in args.compile_models.split(","):  # round 1 pays the compilation, later rounds run compiled
        for p in ("fp32", precisions[0]):
            methods[f"occlens {p} compile"] = lambda p=p: (
                occlens.explain(model, image, patch=patch, stride=stride, precision=p, compile=True).pixel_map
            )
    per_evals = [64] if args.quick else [16, 64, 256]
    for k in per_evals:
        methods[f"captum ppe={k}"] = lambda k=k: captum_map(model, image_dev, target, patch, stride, k)
    slow = ("captum ppe=1 (default)", "naive loop")  # seconds each on a GPU: run in the first --slow-rounds only
    if not args.skip_slow:
        methods["captum ppe=1 (default)"] = lambda: captum_map(model, image_dev, target, patch, stride, 1)
        methods["naive loop"] = lambda: naive_map(model, image_dev, target, patch, stride)
    rows = {m: Row(name, m, windows=grid.size) for m in methods}
    maps: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for method, fn in methods.items():
            if method in slow and r >= args.slow_rounds:
                continue
            out, seconds, peak_rss, peak_cuda = best_of_round(fn, device, watch=r == 0)
            if method == "occlens default" and r == 0:
                engine = occlens.explain(model, image, patch=patch, stride=stride).engine
                rows[method].method = f"occlens default (engine {engine})"
            row = rows[method]
            if seconds < row.seconds:
                row.seconds = seconds
            row.peak_rss_mb, row.peak_cuda_mb = max(row.peak_rss_mb, peak_rss), max(row.peak_cuda_mb, peak_cuda)
            maps[method] = out
            print(f"  round {r + 1}: {name:<18} {method:<24} {seconds:8.2f} s", flush=True)
    reference = next(v for k, v in maps.items() if k.startswith("captum"))
    for method, row in rows.items():
        row.max_abs_diff_vs_captum = float(np.abs(maps[method] - reference).max())
        row.spearman_vs_fp32 = spearman(maps[method], maps["occlens fp32"])
    batch = auto_batch(image, device)
    limits = []
    for p in ("fp32", *precisions):
        limit = Row(name, f"model forward {p}, batch {batch} (limit)", windows=grid.size)
        limit.seconds = grid.size / throughput(model, device, batch, 1.0 if args.quick else 3.0, p)
        limit.notes.append(f"n_windows / the model's own batched images/s, {p} channels-last")
        limits.append(limit)
    return [*rows.values(), *limits]


def auto_batch(image, device) -> int:
    from occlens.engines.memory import auto_batch_size

    return auto_batch_size(729, image.to(device), torch.device(device), None)


def memory_rows(args) -> list[Row]:
    """Peak memory does not grow with the number of windows: stride 8 vs stride 2 on one model."""
    rows = []
    model = build_model("resnet18", args.device)
    image = torch.rand(3, 112, 112)
    for stride in (8, 2):
        _, seconds, peak_rss, peak_cuda = timed(
            lambda s=stride: occlens.explain(model, image, patch=16, stride=s, precision="bf16"), args.device, True
        )
        windows = occlens.Grid.build(112, 112, 16, stride).size
        rows.append(Row("resnet18 @112", f"occlens bf16, stride {stride}", seconds, windows, peak_rss, peak_cuda))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| model | method | windows/s | seconds | vs captum best | vs captum default | time / limit | "
             "peak RSS MB | peak CUDA MB | max abs diff vs captum | spearman vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for model in dict.fromkeys(r.model for r in rows):
        group = [r for r in rows if r.model == model]
        captum = [r for r in group if r.method.startswith("captum ppe=") and "default" not in r.method]
        best = min((r.seconds for r in captum), default=None)
        default = next((r.seconds for r in group if "default" in r.method), None)
        limits = {r.method.split()[2].rstrip(","): r.seconds for r in group if r.method.endswith("(limit)")}
        for r in group:
            vs_best = f"{best / r.seconds:.2f}x" if best else ""
            vs_default = f"{default / r.seconds:.1f}x" if default else ""
            precision = r.method.split()[1] if r.method.startswith("occlens") else None
            precision = "fp32" if precision == "default" else precision
            of_limit = f"{r.seconds / limits[precision]:.2f}" if precision in limits else ""
            diff = "" if r.max_abs_diff_vs_captum is None else f"{r.max_abs_diff_vs_captum:.1e}"
            rho = "" if r.spearman_vs_fp32 is None else f"{r.spearman_vs_fp32:.4f}"
            lines.append(f"| {r.model} | {r.method} | {r.windows_per_s:.1f} | {r.seconds:.2f} | {vs_best} | "
                         f"{vs_default} | {of_limit} | {r.peak_rss_mb:.0f} | {r.peak_cuda_mb:.0f} | {diff} | "
                         f"{rho} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet18,resnet50,vgg16,efficientnet-lite0")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="Lite0 only, 32x32 windows (49), one round, Captum at 64")
    ap.add_argument("--slow-rounds", type=int, default=2, help="rounds for Captum's default and the naive loop")
    ap.add_argument("--skip-slow", action="store_true", help="skip Captum's default and the naive loop")
    ap.add_argument("--compile-models", default="", help="models to time with compile=True too (comma-separated)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.quick:
        args.models, args.patch, args.stride, args.rounds = "efficientnet-lite0", 32, 32, 1
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, args)
    if not args.quick:
        rows += memory_rows(args)
    md = table(rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"occlusion_speed-{args.device.split(':')[0]}{'-quick' if args.quick else ''}"
    meta = {"device": args.device, "device_name": device_name, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "patch": args.patch, "stride": args.stride, "rounds": args.rounds,
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    stem.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{md}\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
