"""occlens against MONAI's ``OcclusionSensitivity`` on 3-D models: the same windows, the same δL, timed interleaved.

    nice -n 10 python -W ignore benchmarks/monai_compare.py --rounds 2 --out benchmarks/results/monai_compare-cpu

Three models, each on one volume (1 channel, values in [0, 1]); gray fill (0.5); the window grid is the same for
both tools (``stride = patch * (1 - overlap)`` and ``(side - patch) % stride == 0``, where MONAI's sliding windows
and occlens's clipped ones coincide):

* ``densenet121``: ``monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)``, random
  weights, eval, at ``--densenet-side`` (48³) with windows of ``--densenet-patch`` (12³, stride 12: 64 windows);
* ``resnet``: a small 3-D ResNet (a stem, four basic blocks with batch norm, 16 -> 64 channels), random weights, at
  ``--resnet-side`` (64³), windows of ``--resnet-patch`` (16³: 64 windows);
* ``phantom``: a small 3-D CNN trained here in seconds (``--train-steps``) to tell synthetic phantoms with a
  bright spherical lesion from those without, explained on a phantom with a lesion at ``--phantom-side`` (48³),
  windows ``--phantom-patch`` (12³) at ``--phantom-stride`` (6: 343 windows).

Rows (each run once per round, ``--rounds`` rounds interleaved, the best time kept):

* ``MONAI n_batch=N`` for each of ``--n-batch``: ``OcclusionSensitivity(model, mask_size=patch, n_batch=N,
  mode=0.5, overlap=1 - (stride + 0.5)/patch, activate=log_softmax)``; its voxel map of class Q minus the clean
  log P(Q) is occlens's voxel map (δL), checked (``max |Δ|``) before any time is kept; its best ``n_batch`` is
  the reference.
* ``occlens exact``: ``occlens.explain(model, occlens.Volume(x), patch=..., stride=...)``, the default engine.
* ``occlens incremental``: the same with ``engine="incremental"``; "unavailable" where it warns and runs dense.
* ``occlens fast``: ``fast=True``; ``occlens budget S``: ``budget=`` S x MONAI's best time so far, for each S of
  ``--budget-share`` (0.2: 5x MONAI, if the anytime map keeps its deadline; 0.4).
  Their maps against the exact one: Spearman ρ of the window grids (``delta``, ``Dw x R x C``; as the 2-D
  benchmarks) and of the voxel maps (``pixel_map``, ``D x H x W``), and SSIM of the voxel maps
  (:func:`occlens.analysis.similarity.ssim` in 3-D, 7³ windows; a window grid of 4³ is smaller than one window).

Writes ``OUT.json`` (``meta``, ``models``: one row per model and its windows, ``rows``: one per model and method)
and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from meta import meta

import occlens
from occlens.analysis.similarity import spearman, ssim


class Block(nn.Module):
    """A 3-D basic residual block: two 3³ convolutions with batch norm, a 1³ projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout)
        self.conv2, self.bn2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout)
        self.skip = (nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
                     if stride != 1 or cin != cout else nn.Identity())  # fmt: skip

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 16, 7, 2, 3, bias=False), nn.BatchNorm3d(16), nn.ReLU(), nn.MaxPool3d(3, 2, 1),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2), Block(64, 64, 1),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, 2),
    )  # fmt: skip
    return net.eval()


def densenet() -> nn.Module:
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()


LESION_RADIUS = 4.0  # voxels


def phantom(side: int, lesion: bool, rng: np.random.Generator) -> torch.Tensor:
    """A 1 x side³ phantom in [0, 1]: an ellipsoid body (0.4) with smooth texture and noise, and (``lesion``) a
    bright sphere of :data:`LESION_RADIUS` voxels (+0.35) somewhere inside it."""
    d, h, w = np.indices((side,) * 3, dtype=np.float64) / (side - 1) - 0.5
    body = (d / 0.42) ** 2 + (h / 0.38) ** 2 + (w / 0.35) ** 2 <= 1.0
    texture = 0.05 * np.sin(2 * np.pi * (rng.uniform(1, 3) * d + rng.uniform(1, 3) * h + rng.uniform(0, 6)))
    x = np.where(body, 0.4 + texture, 0.05) + rng.normal(0, 0.04, size=body.shape)
    if lesion:
        centre = (rng.uniform(-0.2, 0.2, size=3) * (side - 1))[:, None, None, None]
        r2 = sum(((a * (side - 1)) - c) ** 2 for a, c in zip((d, h, w), centre, strict=True))
        x = x + 0.35 * (r2 <= LESION_RADIUS**2)
    return torch.from_numpy(np.clip(x, 0, 1)).float()[None]


def phantom_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(16, 2),
    )  # fmt: skip


def trained_phantom_cnn(steps: int, side: int = 32, batch: int = 16) -> tuple[nn.Module, float, float]:
    """The phantom CNN trained for ``steps`` batches of fresh phantoms (half with a lesion) at ``side``³; with its
    accuracy on 64 new phantoms and the seconds spent training."""
    start = time.perf_counter()
    model, rng = phantom_cnn(), np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        labels = torch.arange(batch) % 2
        x = torch.stack([phantom(side, bool(k), rng) for k in labels])
        loss = nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        labels = torch.arange(64) % 2
        x = torch.stack([phantom(side, bool(k), rng) for k in labels])
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    return model, accuracy, seconds


def monai_map(model, x: torch.Tensor, patch: int, stride: int, n_batch: int) -> torch.Tensor:
    """MONAI's occluded log-probabilities, ``classes x D x H x W`` (the mean over the windows covering a voxel)."""
    from monai.visualize import OcclusionSensitivity

    # MONAI's stride is int(patch * (1 - overlap)): half a voxel above ``stride`` keeps float rounding off it
    overlap = 1.0 - (stride + 0.5) / patch if stride < patch else 0.0
    occ = OcclusionSensitivity(model, mask_size=patch, n_batch=n_batch, verbose=False, mode=0.5, overlap=overlap,
                               activate=lambda o: torch.log_softmax(o, 1))  # fmt: skip
    with torch.no_grad():
        out, _ = occ(x[None])
    return out[0].as_tensor() if hasattr(out, "as_tensor") else out[0]


def incremental(model, volume, window: dict):
    """``engine="incremental"``, or None where it warns and runs the dense engine (not built for volumes yet)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = occlens.explain(model, volume, engine="incremental", progress=False, **window)
    if not result.engine.startswith("incremental") or any("dense" in str(w.message) for w in caught):
        return None, "; ".join(str(w.message) for w in caught) or f"ran {result.engine}"
    return result, None


def compare(name: str, model, x: torch.Tensor, patch: int, stride: int, args) -> tuple[dict, list[dict]]:
    side = x.shape[-1]
    assert (side - patch) % stride == 0 and patch % stride == 0, "MONAI's windows and occlens's coincide only here"
    volume, window = occlens.Volume(x), {"patch": patch, "stride": stride}
    exact = occlens.explain(model, volume, progress=False, **window)  # a warm-up too
    q = exact.predicted
    with torch.no_grad():
        clean = float(torch.log_softmax(model(x[None]), 1)[0, q])
    times: dict[str, list[float]] = {}
    results: dict[str, object] = {}
    notes: dict[str, str] = {}

    def timed(key: str, fn):
        start = time.perf_counter()
        out = fn()
        times.setdefault(key, []).append(time.perf_counter() - start)
        return out

    for r in range(args.rounds):
        for n in args.n_batch:
            occluded = timed(f"MONAI n_batch={n}", lambda n=n: monai_map(model, x, patch, stride, n))
            diff = float(np.abs(occluded[q].double().numpy() - clean - exact.pixel_map).max())
            notes[f"MONAI n_batch={n}"] = f"max |voxel map - occlens exact| = {diff:.1e}"
            assert diff < 1e-3, diff
        monai_best = min(min(v) for k, v in times.items() if k.startswith("MONAI"))
        results["occlens exact"] = timed("occlens exact", lambda: occlens.explain(model, volume, progress=False,
                                                                                  **window))  # fmt: skip
        inc, why = timed("occlens incremental", lambda: incremental(model, volume, window))
        if inc is None:
            notes["occlens incremental"] = f"unavailable: {why}"
            times.pop("occlens incremental")
        else:
            results["occlens incremental"] = inc
        results["occlens fast"] = timed("occlens fast", lambda: occlens.explain(model, volume, fast=True,
                                                                                progress=False, **window))  # fmt: skip
        for share in args.budget_share:
            key, budget = f"occlens budget {share:g}", share * monai_best
            results[key] = timed(key, lambda b=budget: occlens.explain(model, volume, budget=b, progress=False,
                                                                       **window))  # fmt: skip
            notes[key] = f"budget={budget:.2f} s ({share:g} x MONAI's best so far)"
        print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    monai_key = min((k for k in times if k.startswith("MONAI")), key=lambda k: min(times[k]))
    monai_best = min(times[monai_key])
    rows = []
    for key in [*(f"MONAI n_batch={n}" for n in args.n_batch), "occlens exact", "occlens incremental",
                "occlens fast", *(f"occlens budget {share:g}" for share in args.budget_share)]:  # fmt: skip
        row: dict = {"model": name, "method": key, "note": notes.get(key, "")}
        if key not in times:
            row.update(seconds=None, engine="unavailable")
            rows.append(row)
            continue
        row.update(
            seconds=min(times[key]),
            rounds=", ".join(f"{t:.2f}" for t in times[key]),
            vs_monai_best=monai_best / min(times[key]),
        )
        result = results.get(key)
        if result is not None:
            done = result.meta.get("drilldown", result.meta.get("anytime", {}))
            row.update(engine=result.engine, batch=result.batch_size, scored=done.get("scored", result.grid.size),
                       spearman=spearman(exact.delta, result.delta), ssim=ssim(exact.pixel_map, result.pixel_map),
                       spearman_voxels=spearman(exact.pixel_map, result.pixel_map),
                       max_abs_diff=float(np.abs(result.delta - exact.delta).max()))  # fmt: skip
        rows.append(row)
    info = {"model": name, "volume": "x".join(map(str, x.shape)), "patch": patch, "stride": stride,
            "windows": exact.grid.size, "predicted": q, "monai_best": monai_key}  # fmt: skip
    return info, rows


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"`{m['command']}`, {m['date']}; {m['cpu']['model']} ({', '.join(m['cpu']['flags'])}), "
        f"{m['threads']} threads; load before: `{m['load_before']}`; after: `{m['load_after']}`; best of "
        f"{m['rounds']} interleaved rounds. MONAI {m['monai']}.",
        "",
    ]
    if "phantom" in m:
        p = m["phantom"]
        lines += [f"Phantom CNN: trained {p['train_seconds']:.1f} s ({p['steps']} steps), accuracy {p['accuracy']:.2f} "
                  f"on 64 new phantoms.", ""]  # fmt: skip
    for i in result["models"]:
        lines += [
            f"**{i['model']}**: volume {i['volume']}, window {i['patch']}³ stride {i['stride']} "
            f"({i['windows']} windows); reference: {i['monai_best']}",
            "",
            "| method | engine | s | vs MONAI best | windows scored | ρ windows | ρ voxels | SSIM voxels | note |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in (r for r in result["rows"] if r["model"] == i["model"]):
            if r["seconds"] is None:
                lines.append(f"| {r['method']} | unavailable | | | | | | | {r['note']} |")
                continue
            q = f"{r['spearman']:.3f} | {r['spearman_voxels']:.3f} | {r['ssim']:.3f}" if "spearman" in r else " | | "
            scored = r.get("scored", i["windows"])
            lines.append(f"| {r['method']} | {r.get('engine', 'MONAI')} | {r['seconds']:.2f} | "
                         f"{r['vs_monai_best']:.2f}x | {scored} | {q} | {r['note']} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n-batch", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16])
    p.add_argument("--models", default="densenet121,resnet,phantom")
    p.add_argument("--densenet-side", type=int, default=48)
    p.add_argument("--densenet-patch", type=int, default=12)
    p.add_argument("--resnet-side", type=int, default=64)
    p.add_argument("--resnet-patch", type=int, default=16)
    p.add_argument("--phantom-side", type=int, default=48)
    p.add_argument("--phantom-patch", type=int, default=12)
    p.add_argument("--phantom-stride", type=int, default=6)  # 343 windows; 4: 1000 (MONAI's default overlap, 0.6)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--budget-share", type=lambda s: [float(v) for v in s.split(",")], default=[0.2, 0.4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/monai_compare-cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import monai

    before = uptime()
    models, rows, extra = [], [], {}
    wanted = args.models.split(",")
    if "densenet121" in wanted:
        x = torch.rand(1, *(args.densenet_side,) * 3, generator=torch.Generator().manual_seed(1))
        models.append(compare("densenet121", densenet(), x, args.densenet_patch, args.densenet_patch, args))
        rows += models[-1][1]
    if "resnet" in wanted:
        x = torch.rand(1, *(args.resnet_side,) * 3, generator=torch.Generator().manual_seed(2))
        models.append(compare("resnet", small_resnet(), x, args.resnet_patch, args.resnet_patch, args))
        rows += models[-1][1]
    if "phantom" in wanted:
        model, accuracy, seconds = trained_phantom_cnn(args.train_steps)
        extra["phantom"] = {"steps": args.train_steps, "accuracy": accuracy, "train_seconds": seconds,
                            "lesion_radius": LESION_RADIUS}  # fmt: skip
        print(f"phantom CNN: accuracy {accuracy:.2f} after {seconds:.1f} s", flush=True)
        x = phantom(args.phantom_side, True, np.random.default_rng(7))
        models.append(compare("phantom", model, x, args.phantom_patch, args.phantom_stride, args))
        rows += models[-1][1]
    result = {"meta": meta(threads=torch.get_num_threads(), rounds=args.rounds, monai=monai.__version__,
                           load_before=before, load_after=uptime(), budget_share=args.budget_share,
                           similarity="Spearman on the window grids (delta) and on the voxel maps (pixel_map); "
                                      "SSIM in 3-D (7^3 windows) on the voxel maps", **extra),
              "models": [info for info, _ in models], "rows": rows}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
