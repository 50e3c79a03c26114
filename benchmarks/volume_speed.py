"""Seconds to explain a 64³ volume with a small 3-D CNN: occlens.explain against a MONAI-style loop and Captum.

* occlens: ``occlens.explain(model, occlens.Volume(x), patch=..., stride=...)`` (dense; the batch from memory).
* MONAI-style: a reimplementation of MONAI's ``OcclusionSensitivity`` approach (monai is not installed here):
  each batch is ``n_batch`` fresh copies of the whole volume (``image.repeat``), occluded one window at a time in a
  Python loop, run through the model; the class's log-probability is read from each copy (MONAI returns the
  occluded probabilities; the same forward passes).
* Captum: ``Occlusion(lambda z: log_softmax(model(z))).attribute(x, sliding_window_shapes=(1, p, p, p),
  strides=(1, s, s, s), baselines=0.5, perturbations_per_eval=n_batch)``.

All three compute the same δL per window (checked: the maps agree to 1e-5 before any time is reported). Each
method runs once per round, ``REPEATS`` rounds interleaved in one process, the best time kept; the ratios are of
one run on one machine.

    python benchmarks/volume_speed.py      # writes benchmarks/results/volume_speed-cpu.{json,md}
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 64
CONFIGS = [(16, 16), (16, 8)]  # (patch, stride): 64 and 343 windows
N_BATCH = 16  # MONAI's default n_batch; Captum's perturbations_per_eval
REPEATS = 3


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 2),
    ).eval()  # fmt: skip


def monai_like(model, x: torch.Tensor, patch: int, stride: int, target: int, n_batch: int = N_BATCH) -> np.ndarray:
    """MONAI's approach: n_batch whole copies per batch, occluded one window at a time in a Python loop."""
    side = x.shape[-1]
    starts = list(range(0, side - patch + 1, stride))
    windows = [(d, h, w) for d in starts for h in starts for w in starts]
    with torch.no_grad():
        clean = float(torch.log_softmax(model(x[None]), 1)[0, target])
        out = []
        for i in range(0, len(windows), n_batch):
            part = windows[i : i + n_batch]
            batch = x[None].repeat(len(part), 1, 1, 1, 1)
            for b, (d, h, w) in enumerate(part):
                batch[b, :, d : d + patch, h : h + patch, w : w + patch] = 0.5
            out.append(torch.log_softmax(model(batch), 1)[:, target])
    n = len(starts)
    return (torch.cat(out).double().numpy() - clean).reshape(n, n, n)


def captum(model, x: torch.Tensor, patch: int, stride: int, target: int) -> np.ndarray:
    from captum.attr import Occlusion

    with torch.no_grad():
        a = Occlusion(lambda z: torch.log_softmax(model(z), 1)).attribute(
            x[None], target=target, sliding_window_shapes=(1, patch, patch, patch), strides=(1, stride, stride, stride),
            baselines=0.5, perturbations_per_eval=N_BATCH,
        )  # fmt: skip
    return -a[0, 0].double().numpy()  # the voxel map (minus the attribution)


def interleaved(fns: dict, repeats: int = REPEATS) -> tuple[dict, dict]:
    """Each of ``fns`` run once per round, ``repeats`` rounds (so that a shared machine's slow spells fall on every
    method alike); the best time of each and its last value."""
    times: dict = {k: [] for k in fns}
    values: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}, values


def cpu() -> dict:
    import subprocess

    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = [f for f in fields.get("Flags", "").split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile")]
    return {"model": fields.get("Model name", platform.processor()), "flags": flags}


def main() -> None:
    import torchvision

    import occlens

    torch.set_num_threads(2)
    model = small_cnn()
    x = torch.rand(1, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    volume = occlens.Volume(x)
    rows = []
    for patch, stride in CONFIGS:
        q = occlens.explain(model, volume, patch=patch, stride=stride, progress=False).predicted  # also a warm-up
        times, values = interleaved({
            "occlens": lambda p=patch, s=stride: occlens.explain(model, volume, patch=p, stride=s, progress=False),
            "monai": lambda p=patch, s=stride, q=q: monai_like(model, x, p, s, q),
            "captum": lambda p=patch, s=stride, q=q: captum(model, x, p, s, q),
        })  # fmt: skip
        (t_occ, t_monai, t_captum), (r, monai, attribution) = times.values(), values.values()
        assert np.abs(r.delta - monai).max() < 1e-5, np.abs(r.delta - monai).max()
        assert np.abs(r.pixel_map - attribution).max() < 1e-5, np.abs(r.pixel_map - attribution).max()
        rows.append({"volume": [1, SIDE, SIDE, SIDE], "patch": patch, "stride": stride, "windows": r.windows,
                     "occlens_s": t_occ, "occlens_batch": r.batch_size, "monai_like_s": t_monai,
                     "captum_s": t_captum, "n_batch": N_BATCH, "occlens_vs_monai_like": t_monai / t_occ,
                     "occlens_vs_captum": t_captum / t_occ})  # fmt: skip
        print(rows[-1], flush=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "occlens": occlens.__version__}  # fmt: skip
    meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(), "cpu": cpu(),
            "gpu": None, "versions": versions, "threads": torch.get_num_threads(), "repeats": REPEATS}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "volume_speed-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"`{meta['command']}`, {meta['date']}; {meta['cpu']['model']} ({', '.join(meta['cpu']['flags'])}), "
        f"{meta['threads']} threads; best of {REPEATS} interleaved rounds (a shared machine: times vary by 30 %)",
        "",
        f"A small 3-D CNN on a 1x{SIDE}³ volume, gray fill; the same δL from all three (checked to 1e-5). "
        f"MONAI-style: n_batch={N_BATCH} whole copies per batch, a Python loop per window; Captum: "
        f"perturbations_per_eval={N_BATCH}.",
        "",
        "| patch | stride | windows | occlens s (batch) | MONAI-style s | Captum s | vs MONAI-style | vs Captum |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['patch']} | {r['stride']} | {r['windows']} | {r['occlens_s']:.2f} ({r['occlens_batch']}) | "
            f"{r['monai_like_s']:.2f} | {r['captum_s']:.2f} | {r['occlens_vs_monai_like']:.2f}x | "
            f"{r['occlens_vs_captum']:.2f}x |"
            for r in rows
        ),  # fmt: skip
    ]
    (RESULTS / "volume_speed-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
