"""Targets beyond a class, timed: segmentation against Captum, and a detector's boxes, 1 against many.

    nice -n 10 python -W ignore benchmarks/targets_speed.py --size 128 --rounds 2 \
        --out benchmarks/results/targets_speed-cpu

(a) Segmentation (torchvision FCN-ResNet50, DeepLabV3-ResNet50, LRASPP-MobileNetV3; random weights, nothing
downloaded): one segment target (the class predicted most on the clean image, its pixels frozen), window =
stride = ``--patch``. occlens's default (``engine="auto"``) against Captum's ``Occlusion`` over a forward
that reduces the output to the same ``s`` (the region's mean per-pixel log-softmax of the class), at each
``perturbations_per_eval`` of ``--ppe`` (its best is reported); the maps are checked equal (max |Δ|). The
incremental engine's MAC bound (dense MACs / incremental MACs of its plan, from the traced graph) is
reported per model: how fast exact incremental inference could be at best.

(b) Detection (Faster R-CNN MobileNetV3-Large FPN, random weights, score threshold 0.001, occlens's
``load_model("torchvision:...")``): the time to explain 1, 10 and 50 explicitly chosen reference boxes
(``box(xyxy, cls)`` targets: the sub-targets of one call share the forward passes), interleaved repeats,
best of ``--rounds``. A tool that explains one box per call pays each box's passes again.

Timings are wall-clock on this machine, best of the rounds, interleaved (every method in each round).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from meta import meta  # benchmarks/ is the script's own folder

import occlens
from occlens.core.grid import Grid
from occlens.engines import costmodel, incremental
from occlens.targets import BoxTarget, segment

SEGMENTERS = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"


def segmenter(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21).eval()


def mac_bound(model, image: torch.Tensor, grid: Grid) -> float | None:
    """Dense MACs / incremental MACs of the incremental engine's plan (None where it cannot trace the model)."""
    with torch.no_grad():
        reference = model(image[None])["out"]
    try:
        return costmodel.cost(incremental.build(model, image, grid, reference)).mac_saving
    except incremental.Unsupported:
        return None


def captum_map(model, image, cls: int, region: torch.Tensor, patch: int, ppe: int) -> np.ndarray:
    from captum.attr import Occlusion

    def s(z):  # the segment's score: the region's mean per-pixel log P(cls), float64
        with torch.no_grad():
            lp = torch.log_softmax(model(z)["out"].double(), 1)[:, cls]
        return lp[:, region].mean(1)

    attr = Occlusion(s).attribute(image[None], sliding_window_shapes=(3, patch, patch), strides=(3, patch, patch),
                                  baselines=0.5, perturbations_per_eval=ppe)  # fmt: skip
    return -attr[0, 0, ::patch, ::patch].double().numpy()  # occlens's δL = -(Captum's attribution)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def segmentation(args, save) -> list[dict]:
    rows = []
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    grid = Grid.build(args.size, args.size, args.patch, args.patch)
    for name in args.models:
        model = segmenter(name)
        with torch.no_grad():
            predicted = model(image[None])["out"][0].argmax(0)
        cls = int(predicted.flatten().bincount().argmax())
        target = segment(cls)
        occlens.explain(model, image, target=target, patch=args.patch)  # warm-up (and the plan, kept)
        times: dict[str, list[float]] = {"occlens": [], **{f"captum ppe={p}": [] for p in args.ppe}}
        diff, engine, batch, load = 0.0, None, None, []
        for _ in range(args.rounds):
            load.append(round(os.getloadavg()[0], 2))  # the 1-minute load average as each round starts
            t, got = timed(lambda: occlens.explain(model, image, target=target, patch=args.patch))  # noqa: B023
            times["occlens"].append(t)
            engine, batch = got.engine, got.batch_size
            for p in args.ppe:
                t, want = timed(lambda: captum_map(model, image, cls, predicted == cls, args.patch, p))  # noqa: B023
                times[f"captum ppe={p}"].append(t)
                diff = max(diff, float(np.abs(got.delta - want).max()))
        best = {k: min(v) for k, v in times.items()}
        captum = min(v for k, v in best.items() if k.startswith("captum"))
        row = {
            "model": name,
            "size": args.size,
            "windows": grid.size,
            "engine (occlens default)": engine,
            "occlens batch": batch,
            "occlens s": best["occlens"],
            **{f"{k} s": v for k, v in best.items() if k != "occlens"},
            "captum best s": captum,
            "speed-up vs captum best": captum / best["occlens"],
            "incremental MAC bound": mac_bound(model, image, grid),
            "max abs Δ vs captum": diff,
            "load": load,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(rows)  # each model's row as soon as it is measured
    return rows


def detection(args) -> list[dict]:
    size = args.detector_size
    model = occlens.load_model(f"torchvision:{DETECTOR}", weights="random", device="cpu",
                               description={"input_size": size, "resize": size})  # fmt: skip
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    boxes = []  # 50 reference boxes, chosen: random corners and sizes inside the image, random COCO classes
    for _ in range(max(args.boxes)):
        w, h = rng.uniform(0.15, 0.6, 2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        boxes.append(BoxTarget((round(x0), round(y0), round(x0 + w), round(y0 + h)), int(rng.integers(1, 91))))

    def explain_boxes(count: int):  # one call, ``count`` sub-targets: a function of the output, boxes as one target
        return occlens.explain(model, image, target=Boxes(tuple(boxes[:count])), patch=args.detector_patch)

    explain_boxes(1)  # warm-up
    times: dict[int, list[float]] = {n: [] for n in args.boxes}
    for _ in range(args.rounds):
        for n in args.boxes:
            t, got = timed(lambda: explain_boxes(n))  # noqa: B023
            times[n].append(t)
            assert got.deltas.shape[0] == n
    one = min(times[args.boxes[0]])
    rows = [{"model": DETECTOR, "size": size, "windows": got.windows, "boxes": n, "seconds": min(times[n]),
             "vs 1 box": min(times[n]) / one} for n in args.boxes]  # fmt: skip
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


class Boxes:
    """Several box targets as one (their sub-targets side by side, from the same forward passes)."""

    def __init__(self, boxes: tuple[BoxTarget, ...]):
        self.boxes = boxes

    def bind(self, clean):
        from occlens.core.targets import Bound

        bound = [b.bind(clean) for b in self.boxes]

        def score(raw, n):
            return np.concatenate([b.score(raw, n) for b in bound], axis=1)

        names = tuple(f"{i}: {b.names[0]}" for i, b in enumerate(bound))
        return Bound(names, score, kind="box", info=tuple(b.info[0] for b in bound))

    def spec(self) -> str:
        return f"boxes:{len(self.boxes)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="segmentation input side (the issue's is 256)")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--ppe", type=int, nargs="+", default=[16, 64], help="Captum's perturbations_per_eval tried")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--detector-size", type=int, default=128)
    ap.add_argument("--detector-patch", type=int, default=32)
    ap.add_argument("--boxes", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--skip", choices=["segmentation", "detection"], action="append", default=[])
    ap.add_argument("--models", nargs="+", default=list(SEGMENTERS), choices=SEGMENTERS)
    ap.add_argument("--keep-freed", action="store_true", help="keep freed blocks in this process, as the occlens "
                    "command does (glibc's mmap threshold raised; for Captum too): occlens's CPU batch is then 32")
    ap.add_argument("--out", type=Path, required=True, help="results stem: STEM.json and STEM.md")
    args = ap.parse_args()
    if args.keep_freed:
        from occlens.engines.memory import keep_freed_blocks

        keep_freed_blocks()
    run = meta(threads=torch.get_num_threads(), load_before=os.getloadavg())
    results = {"meta": run, "keep_freed": args.keep_freed, "segmentation": [], "detection": []}

    def save(rows: list[dict]) -> None:
        results["segmentation"] = rows
        write(results, args.out)

    if "segmentation" not in args.skip:
        results["segmentation"] = segmentation(args, save)
    if "detection" not in args.skip:
        results["detection"] = detection(args)
    write(results, args.out)


def write(results: dict, out: Path) -> None:
    results["meta"]["load_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [f"`{m['command']}` · {m['date']} · {m['cpu']['model']} ({', '.join(m['cpu']['flags'])}), "
             f"{m['threads']} threads, load {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after",
             ""]  # fmt: skip
    if results["segmentation"]:
        lines += ["| model | size | windows | occlens (engine) | Captum best | speed-up | MAC bound | max abs Δ |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results["segmentation"]:
            bound = "-" if r["incremental MAC bound"] is None else f"{r['incremental MAC bound']:.2f}x"
            speed, diff = r["speed-up vs captum best"], r["max abs Δ vs captum"]
            lines.append(f"| {r['model']} | {r['size']}² | {r['windows']} | {r['occlens s']:.2f} s "
                         f"({r['engine (occlens default)']}) | {r['captum best s']:.2f} s | "
                         f"{speed:.2f}x | {bound} | {diff:.1e} |")  # fmt: skip
        lines.append("")
    if results["detection"]:
        lines += ["| detector | size | windows | boxes | seconds | vs 1 box |", "|---|---|---|---|---|---|"]
        for r in results["detection"]:
            lines.append(f"| {r['model']} | {r['size']}² | {r['windows']} | {r['boxes']} | {r['seconds']:.2f} | "
                         f"{r['vs 1 box']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
