"""occlens's incremental engine and fast drill-down against its own dense engine, in one process, interleaved.

    python benchmarks/incremental_speed.py --quick                 # a smoke run: a few minutes on 2 CPU cores
    python benchmarks/incremental_speed.py --device cpu            # the full CPU table (about 30 min on 2 cores)
    python benchmarks/incremental_speed.py --device cuda           # the full GPU table

Exact part (full): 224 x 224 random image, window 16, stride 8 (729 windows), fp32, random-weight
VGG16, ResNet-18, ResNet-50 (torchvision) and the default EfficientNet-Lite0. Each round builds the
incremental plan (trace, clean pass, regions; its time is charged to the incremental engine), splits
the windows into 8 chunks (whole groups of the plan) and runs every chunk on the dense engine and on
the incremental engine one right after the other, alternating which goes first, so that both see the
same load on a shared machine; then ``occlens.explain`` runs end to end with ``engine="dense"`` and
``engine="auto"`` (clean pass, auto's planning and the result included), and auto is compared with
that end-to-end dense run. The table reports each method's best round and its speedup over dense
(best vs best, and the range of the ratios within a round), the largest log-probability difference
from dense, and the cost model's numbers for the same plan: the theoretical MAC saving (Krypton's
Eq. 9-12) and the predicted speedup ``auto`` decides on. "MAC saving (plan)" counts what the engine
computes (regions covering most of their map go dense); "regions to the end" never switches to
dense before a global op.

Approximate part: the default model (and ``--fast-models``) on each bundled photo, same window and
stride. Per round: the exact dense map, the exact incremental map, ``fast=True`` (drill-down on the
auto engine), ``fast=True`` on the dense engine (drill-down alone), ``budget=SECONDS`` for each of
``--budgets`` (the anytime map), and Krypton's projective-field cap tau on the incremental engine
(not used by ``fast``; shown for comparison). Against the exact map: SSIM (heat-map images,
see ``occlens.analysis.similarity.ssim``) and Spearman rank correlation of the R x C δL maps.

Writes ``RESULTS/incremental_speed-DEVICE[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder
from PIL import Image

import occlens
from occlens.analysis import similarity
from occlens.core.fill import baseline
from occlens.core.grid import Grid
from occlens.core.samples import samples
from occlens.core.targets import class_scores
from occlens.engines import costmodel, incremental
from occlens.engines.dense import Dense
from occlens.engines.memory import auto_batch_size
from occlens.models import Normalized, load_default_model
from occlens.models.forward import make_forward

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Row:
    model: str
    method: str
    engine: str = ""
    seconds: float = float("inf")
    rounds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # dense / this, per round, same round
    windows: int = 0
    scored: int = 0
    max_abs_diff: float | None = None
    ssim: float | None = None
    spearman: float | None = None
    mac_saving: float | None = None
    mac_saving_regions_only: float | None = None
    predicted: float | None = None


def build_model(name: str, device: str) -> torch.nn.Module:
    if name in ("efficientnet-lite0", "efficientnet-lite0-unfolded"):  # unfolded: with its 49 batch norms
        return load_default_model(device, fold=not name.endswith("-unfolded")).module
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    return Normalized(net, IMAGENET_MEAN, IMAGENET_STD).eval().to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def record(row: Row, seconds: float) -> None:
    row.rounds.append(seconds)
    row.seconds = min(row.seconds, seconds)


def exact_rows(name: str, args) -> list[Row]:
    """Dense vs incremental on the same chunks of windows, alternating chunk by chunk; then auto end to end."""
    device, patch, stride = args.device, args.patch, args.stride
    model = build_model(name, device)
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = image.to(device)
    grid = Grid.build(args.size, args.size, patch, stride)
    with torch.inference_mode():
        scores = model(x[None])
    fill = baseline(x, "gray")
    forward = make_forward(model, torch.device(device), True, "fp32", False)
    dense_batch = auto_batch_size(grid.size, x, torch.device(device), None)
    ideal = costmodel.cost(incremental.build(model, x, grid, scores, dense_fraction=1.0))
    rows = {m: Row(name, m, windows=grid.size, mac_saving_regions_only=ideal.mac_saving) for m in ENGINES}
    for r in range(args.rounds):
        plan, build_s = timed(partial(incremental.build, model, x, grid, scores), device)
        cost = costmodel.cost(plan)
        batch = incremental.batch_size(plan, grid.size)
        parts = [p.windows for p in plan.parts]
        split = np.array_split(np.arange(len(parts)), min(8, len(parts)))  # a few whole parts per chunk
        chunks = [np.sort(np.concatenate([parts[i] for i in c])) for c in split]
        totals, outs = {"dense": 0.0, "incremental": build_s}, {"dense": [], "incremental": []}
        for k, windows in enumerate(chunks):
            runs = {
                "dense": partial(
                    Dense(forward, grid, dense_batch).occluded_scores, x, fill, class_scores(CLASSES, "logits")
                ),
                "incremental": partial(
                    incremental.Incremental(plan, batch).occluded_scores, None, fill, class_scores(CLASSES, "logits")
                ),
            }
            for method in ("dense", "incremental") if k % 2 == 0 else ("incremental", "dense"):
                (out, _), seconds = timed(partial(runs[method], windows=windows), device)
                totals[method] += seconds
                outs[method].append(out)
        diff = float(np.abs(np.concatenate(outs["incremental"], 1) - np.concatenate(outs["dense"], 1)).max())
        whole = partial(occlens.explain, model, image, patch=patch, stride=stride)
        order = ("auto", "dense") if r % 2 else ("dense", "auto")  # end to end: both pay the clean pass, auto its plan
        ends = {engine: timed(partial(whole, engine=engine), device) for engine in order}
        (result, auto_s), (_, explain_s) = ends["auto"], ends["dense"]
        for method, seconds in totals.items():
            record(rows[method], seconds)
            rows[method].ratios.append(totals["dense"] / seconds)
        for method, seconds in (("dense (explain)", explain_s), ("auto (explain)", auto_s)):
            record(rows[method], seconds)
            rows[method].ratios.append(explain_s / seconds)
        rows["dense"].engine, rows["incremental"].engine = "dense", "incremental"
        rows["dense (explain)"].engine, rows["auto (explain)"].engine = "dense", result.engine
        rows["incremental"].max_abs_diff, rows["dense"].max_abs_diff = diff, 0.0
        rows["auto (explain)"].predicted = cost.predicted_speedup(
            device.split(":")[0], incremental.mean_batch(plan, batch), dense_batch
        )
        for row in rows.values():
            row.mac_saving = cost.mac_saving
        print(f"  round {r + 1}: {name:<18} dense {totals['dense']:8.2f} s  incremental {totals['incremental']:8.2f} s "
              f"(build {build_s:.2f} s)  auto -> {result.engine} {auto_s:8.2f} s", flush=True)  # fmt: skip
    auto = rows["auto (explain)"]
    auto.max_abs_diff = rows["incremental"].max_abs_diff if auto.engine == "incremental" else 0.0
    rows["dense (explain)"].max_abs_diff = 0.0
    return list(rows.values())


ENGINES = ("dense", "incremental", "dense (explain)", "auto (explain)")
CLASSES = [0, 1]


def capped_delta(model, image: torch.Tensor, grid: Grid, target: int, loss: float, cap: float, device: str):
    """δL with Krypton's projective-field cap: the incremental engine's regions never exceed ``cap`` per side."""
    x = image.to(device)
    plan = incremental.build(model, x, grid, cap=cap)
    size = incremental.batch_size(plan, grid.size)
    logp, _ = incremental.Incremental(plan, size).occluded_scores(
        None, baseline(x, "gray"), class_scores([target], "logits")
    )
    return (loss + logp[0]).reshape(grid.rows, grid.cols)


def approximate_rows(args) -> list[Row]:
    loaded = load_default_model(args.device)
    rows = []
    for model_name in args.fast_models.split(","):
        model = loaded.module if model_name == "efficientnet-lite0" else build_model(model_name, args.device)
        for s in samples()[: args.photos]:
            rows += photo_rows(model, f"{model_name} / {s.name}", loaded.preprocess(Image.open(s.path)), args)
    return rows


def photo_rows(model, name: str, image: torch.Tensor, args) -> list[Row]:
    device = args.device
    window = {"patch": args.patch_fast, "stride": args.stride_fast}
    grid = Grid.build(image.shape[1], image.shape[2], args.patch_fast, args.stride_fast)
    methods = {
        "exact (dense)": partial(occlens.explain, model, image, engine="dense", **window),
        "exact (incremental)": partial(occlens.explain, model, image, engine="incremental", **window),
        "fast (auto)": partial(occlens.explain, model, image, fast=True, **window),
        "fast (dense)": partial(occlens.explain, model, image, engine="dense", fast=True, **window),
    }
    for budget in args.budgets:
        methods[f"budget {budget:g} s (auto)"] = partial(occlens.explain, model, image, budget=budget, **window)
    caps = {f"tau={cap} (incremental)": cap for cap in args.caps}
    group = {m: Row(name, m, windows=grid.size) for m in [*methods, *caps]}
    maps = {}
    for r in range(args.rounds):
        for method, fn in methods.items():
            result, seconds = timed(fn, device)
            record(group[method], seconds)
            group[method].engine = result.engine
            notes = result.meta.get("drilldown", result.meta.get("anytime", {}))
            group[method].scored = notes.get("scored", grid.size)
            maps[method] = result.delta
            if method == "exact (dense)":
                exact = result
            print(f"  round {r + 1}: {name:<10} {method:<22} {seconds:8.2f} s", flush=True)
        for method, cap in caps.items():
            fn = partial(capped_delta, model, image, grid, exact.target, exact.loss, cap, device)
            maps[method], seconds = timed(fn, device)
            record(group[method], seconds)
            group[method].engine, group[method].scored = "incremental, capped", grid.size
            print(f"  round {r + 1}: {name:<10} {method:<22} {seconds:8.2f} s", flush=True)
    for method, row in group.items():
        row.ssim = similarity.ssim(maps["exact (dense)"], maps[method])
        row.spearman = similarity.spearman(maps["exact (dense)"], maps[method])
        row.max_abs_diff = float(np.abs(maps[method] - maps["exact (dense)"]).max())
    return list(group.values())


def ratio_range(row: Row, dense: Row) -> str:
    ratios = row.ratios or [d / x for d, x in zip(dense.rounds, row.rounds, strict=False)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""


def exact_table(rows: list[Row]) -> str:
    lines = ["| model | engine asked | engine run | seconds (best) | speedup vs dense | per-round "
             "| MAC saving (plan) | MAC saving (regions to the end) | cost model predicts | max abs diff δL vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for model in dict.fromkeys(r.model for r in rows):
        group = {r.method: r for r in rows if r.model == model}
        for r in group.values():
            dense = group["dense (explain)" if r.method.endswith("(explain)") else "dense"]
            pred = "" if r.predicted is None else f"{r.predicted:.2f}x"
            speedup = f"{dense.seconds / r.seconds:.2f}x"
            lines.append(f"| {r.model} | {r.method} | {r.engine} | {r.seconds:.2f} | {speedup} | "
                         f"{ratio_range(r, dense)} | {r.mac_saving:.2f}x | {r.mac_saving_regions_only:.2f}x | {pred} | "
                         f"{r.max_abs_diff:.1e} |")  # fmt: skip
    return "\n".join(lines)


def approximate_table(rows: list[Row]) -> str:
    lines = ["| model / photo | method | engine run | windows scored | seconds (best) | speedup vs dense "
             "| vs incremental | per-round | SSIM | Spearman | max abs diff δL |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for model in dict.fromkeys(r.model for r in rows):
        group = {r.method: r for r in rows if r.model == model}
        dense, inc = group["exact (dense)"], group["exact (incremental)"]
        for r in group.values():
            lines.append(f"| {r.model} | {r.method} | {r.engine} | {r.scored}/{r.windows} | {r.seconds:.2f} | "
                         f"{dense.seconds / r.seconds:.2f}x | {inc.seconds / r.seconds:.2f}x | {ratio_range(r, dense)} "
                         f"| {r.ssim:.3f} | {r.spearman:.3f} | {r.max_abs_diff:.1e} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="vgg16,resnet18,resnet50,efficientnet-lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--photos", type=int, default=len(samples()), help="how many bundled photos (approximate part)")
    ap.add_argument("--caps", default="0.75", help="projective-field caps tau to show (comma-separated; '' for none)")
    ap.add_argument("--fast-models", default="efficientnet-lite0", help="models of the approximate part")
    ap.add_argument("--budgets", default="", help="budget=SECONDS values to show in the approximate part")
    ap.add_argument("--skip-exact", action="store_true")
    ap.add_argument("--skip-approximate", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--quick", action="store_true", help="ResNet-18 + Lite0 at 32x32 windows, stride 16; one photo")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.caps = [float(c) for c in args.caps.split(",") if c]
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.patch_fast, args.stride_fast = args.patch, args.stride
    if args.quick:
        args.models, args.patch, args.stride, args.rounds, args.photos = "resnet18,efficientnet-lite0", 32, 16, 1, 1
        args.patch_fast, args.stride_fast = 16, 16
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    exact, approx = [], []
    if not args.skip_exact:
        for name in args.models.split(","):
            exact += exact_rows(name, args)
    if not args.skip_approximate:
        approx = approximate_rows(args)
    md = "\n\n".join(t for t in (exact and exact_table(exact), approx and approximate_table(approx)) if t)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = [args.device.split(":")[0], "quick" if args.quick else "", "approximate" if args.skip_exact else "",
             "" if (args.patch, args.stride) == (16, 8) or args.quick else f"p{args.patch}s{args.stride}"]  # fmt: skip
    stem = args.out / f"incremental_speed-{'-'.join(p for p in parts if p)}"
    meta = {"device": args.device, "device_name": device_name, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "size": args.size, "patch": args.patch, "stride": args.stride,
            "fast_patch": args.patch_fast, "fast_stride": args.stride_fast, "rounds": args.rounds,
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
    data = {"meta": meta, "exact": [asdict(r) for r in exact], "approximate": [asdict(r) for r in approx]}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{md}\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
