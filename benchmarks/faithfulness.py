"""Which removal strategy and granularity tell real maps from random ones, by how much, and at what cost.

    python benchmarks/faithfulness.py            # the README's numbers: 3 photos, 10 random maps each
    python benchmarks/faithfulness.py --quick    # a smoke run: one photo, 2 random maps, 5 steps
    python benchmarks/faithfulness.py --analyse benchmarks/results/faithfulness-cpu.json   # the tables again

Workload: the bundled photos (``occlens.core.samples``), the default model (EfficientNet-Lite0) on the
CPU, the maps ``occlens evaluate`` compares: occlusion (``occlens.explain`` defaults: 16 x 16 windows,
gray fill), gradient saliency, and ``--seeds`` random maps (i.i.d. uniform, seeds 0, 1, ...). For every
removal strategy (gray, blur, road) and granularity (the occlusion grid's windows, single pixels), each
map's MoRF and LeRF curves (``occlens.metrics.removal_curves``, ``--steps`` steps, ROAD noise seed 0)
give MoRF AUC (deletion; lower is better), LeRF AUC and SRG = AUC(LeRF) - AUC(MoRF) (higher is better).

Per setting and photo the table gives occlusion's and saliency's scores, the random maps' mean and range,
and whether occlusion beats *every* random map there; over the photos, the mean margin over the random
maps' mean with a bootstrap 95% interval, and the margin in units of the random maps' standard deviation
(z). Times are wall-clock seconds per map (both curves; the median over the photos, and over the random maps)
with the forward passes included, and per image
for evaluate's three default maps (occlusion's own explanation not included: a run's DIR reuses it).

The rule the README's default follows: among the settings where occlusion's SRG *and* MoRF AUC beat
every random map on every photo, the one whose smallest z of SRG over the photos is largest.
Writes ``RESULTS/faithfulness-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from meta import meta as run_meta  # benchmarks/ is the script's own folder

import occlens
from occlens import metrics
from occlens.core.image import read_image
from occlens.core.samples import samples

GRANULARITIES = ("window", "pixel")


def measure(args) -> list[dict]:
    model = occlens.load_model(device="cpu")
    rows = []
    photos = samples()[:1] if args.quick else samples()
    for photo in photos:
        image = model.preprocess(read_image(photo.path))
        height, width = image.shape[1:]
        result = occlens.explain(model, image)
        maps = {"occlusion": (result.pixel_map, "lowest"), "saliency": (occlens.saliency(model, image), "highest")}
        maps |= {f"random{s}": (metrics.random_map(height, width, s), "highest") for s in range(args.seeds)}
        for removal in args.removals:  # warm-up, not timed: the first passes pay for allocation and thread start
            metrics.removal_curves(model.module, image, result.pixel_map, first="lowest", removal=removal, steps=2,
                                   output=model.output)  # fmt: skip
        for removal in args.removals:
            for granularity in GRANULARITIES:
                segments = result.grid if granularity == "window" else None
                for name, (pixel_map, first) in maps.items():
                    start = time.perf_counter()
                    curves = metrics.removal_curves(
                        model.module, image, pixel_map, first=first, removal=removal, segments=segments,
                        steps=args.steps, output=model.output,
                    )  # fmt: skip
                    seconds = time.perf_counter() - start
                    rows.append({
                        "photo": photo.name, "predicted": model.labels[curves.morf.cls], "removal": removal,
                        "granularity": granularity, "map": name, "morf_auc": curves.morf.auc,
                        "lerf_auc": curves.lerf.auc, "srg": curves.srg, "seconds": seconds,
                    })  # fmt: skip
                    print(f"{photo.name:8} {removal:5} {granularity:6} {name:10} MoRF {curves.morf.auc:.3f} "
                          f"LeRF {curves.lerf.auc:.3f} SRG {curves.srg:+.3f} {seconds:6.2f} s", flush=True)  # fmt: skip
    return rows


def analyse(rows: list[dict]) -> list[dict]:
    """One entry per (removal, granularity): per photo and over the photos."""
    out = []
    settings = dict.fromkeys((r["removal"], r["granularity"]) for r in rows)
    for removal, granularity in settings:
        mine = [r for r in rows if (r["removal"], r["granularity"]) == (removal, granularity)]
        photos, per_photo = list(dict.fromkeys(r["photo"] for r in mine)), []
        for photo in photos:
            here = [r for r in mine if r["photo"] == photo]
            real = {r["map"]: r for r in here if not r["map"].startswith("random")}
            random = {k: np.array([r[k] for r in here if r["map"].startswith("random")]) for k in ("srg", "morf_auc")}
            entry = {"photo": photo, "predicted": here[0]["predicted"]}
            for key in ("srg", "morf_auc"):
                r = random[key]
                sd = float(r.std(ddof=1)) if r.size > 1 else float("nan")
                entry[key] = {
                    "occlusion": real["occlusion"][key], "saliency": real["saliency"][key],
                    "random_mean": float(r.mean()), "random_min": float(r.min()), "random_max": float(r.max()),
                    "random_sd": sd,
                    "z_occlusion": (real["occlusion"][key] - r.mean()) / sd if sd > 0 else float("nan"),
                }  # fmt: skip
            entry["occlusion_beats_every_random"] = {
                "srg": entry["srg"]["occlusion"] > entry["srg"]["random_max"],
                "morf_auc": entry["morf_auc"]["occlusion"] < entry["morf_auc"]["random_min"],
            }
            entry["saliency_beats_every_random"] = {
                "srg": entry["srg"]["saliency"] > entry["srg"]["random_max"],
                "morf_auc": entry["morf_auc"]["saliency"] < entry["morf_auc"]["random_min"],
            }
            per_photo.append(entry)
        margins = {
            "srg": np.array([e["srg"]["occlusion"] - e["srg"]["random_mean"] for e in per_photo]),
            "morf_auc": np.array([e["morf_auc"]["random_mean"] - e["morf_auc"]["occlusion"] for e in per_photo]),
        }
        # medians: on a shared machine a run now and then waits for another process
        seconds = {
            m: float(np.median([r["seconds"] for r in mine if r["map"] == m])) for m in ("occlusion", "saliency")
        }
        seconds["random"] = float(np.median([r["seconds"] for r in mine if r["map"].startswith("random")]))
        out.append({
            "removal": removal, "granularity": granularity, "photos": per_photo,
            "margin": {k: {"mean": float(v.mean()), "ci95": metrics.bootstrap_interval(v, 10_000, 0)}
                       for k, v in margins.items()},
            "z_srg_min": float(np.min([e["srg"]["z_occlusion"] for e in per_photo])),
            "occlusion_wins_everywhere": all(all(e["occlusion_beats_every_random"].values()) for e in per_photo),
            "saliency_wins_everywhere": all(all(e["saliency_beats_every_random"].values()) for e in per_photo),
            "seconds_per_map": seconds,
            "seconds_per_image": seconds["occlusion"] + seconds["saliency"] + seconds["random"],
        })  # fmt: skip
    return out


def choose(summary: list[dict]) -> dict | None:
    """The README's rule: occlusion beats every random map everywhere; then the largest smallest z of SRG."""
    winners = [s for s in summary if s["occlusion_wins_everywhere"]]
    return max(winners, key=lambda s: s["z_srg_min"]) if winners else None


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [json.dumps(meta), "", "## Per photo", ""]
    lines += [
        "| removal | granularity | photo | SRG occlusion | SRG saliency | SRG random: mean [min, max] | z | "
        "MoRF occlusion | MoRF saliency | MoRF random: mean [min, max] | "
        "occlusion beats every random map (SRG, MoRF) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        for e in s["photos"]:
            g, d = e["srg"], e["morf_auc"]
            wins = e["occlusion_beats_every_random"]
            lines.append(
                f"| {s['removal']} | {s['granularity']} | {e['photo']} | "
                f"{g['occlusion']:+.3f} | {g['saliency']:+.3f} | "
                f"{g['random_mean']:+.3f} [{g['random_min']:+.3f}, {g['random_max']:+.3f}] | {g['z_occlusion']:.1f} | "
                f"{d['occlusion']:.3f} | {d['saliency']:.3f} | {d['random_mean']:.3f} [{d['random_min']:.3f}, "
                f"{d['random_max']:.3f}] | {'yes' if wins['srg'] else 'NO'}, {'yes' if wins['morf_auc'] else 'NO'} |"
            )
    lines += ["", "## Over the photos", ""]
    lines += [
        "| removal | granularity | SRG margin over random [95% CI] | MoRF AUC margin over random [95% CI] | "
        "smallest z (SRG) | occlusion wins everywhere | saliency wins everywhere | s per map: occlusion, saliency, "
        "random | s per image (3 maps) |",
        "|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for s in summary:
        m, t = s["margin"], s["seconds_per_map"]
        lines.append(
            f"| {s['removal']} | {s['granularity']} | {m['srg']['mean']:+.3f} [{m['srg']['ci95'][0]:+.3f}, "
            f"{m['srg']['ci95'][1]:+.3f}] | {m['morf_auc']['mean']:+.3f} [{m['morf_auc']['ci95'][0]:+.3f}, "
            f"{m['morf_auc']['ci95'][1]:+.3f}] | {s['z_srg_min']:.1f} | "
            f"{'yes' if s['occlusion_wins_everywhere'] else 'no'} | "
            f"{'yes' if s['saliency_wins_everywhere'] else 'no'} | "
            f"{t['occlusion']:.2f}, {t['saliency']:.2f}, {t['random']:.2f} | {s['seconds_per_image']:.1f} |"
        )
    best = choose(summary)
    lines += ["", f"chosen by the rule: {best['removal']} / {best['granularity']}" if best else "", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one photo, 2 random maps, 5 steps")
    parser.add_argument("--seeds", type=int, default=10, help="random maps per photo")
    parser.add_argument("--steps", type=int, default=metrics.DEFAULT_STEPS, help="steps per curve")
    parser.add_argument("--removals", default=",".join(metrics.REMOVALS), help="comma-separated strategies")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--analyse", type=Path, metavar="JSON", help="rewrite the tables from a results file")
    args = parser.parse_args()
    if args.analyse:
        saved = json.loads(args.analyse.read_text())
        summary = analyse(saved["rows"])
        args.analyse.write_text(
            json.dumps({"meta": saved["meta"], "summary": summary, "rows": saved["rows"]}, indent=1)
        )
        args.analyse.with_suffix(".md").write_text(markdown(summary, saved["meta"]))
        print(markdown(summary, saved["meta"]))
        return
    args.removals = [metrics.check_removal(r) for r in args.removals.split(",")]
    if args.quick:
        args.seeds, args.steps = 2, 5
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows = measure(args)
    summary = analyse(rows)
    meta = {
        "device": "cpu", "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps, "seeds": args.seeds,
        "load_average_before": load, "seconds": round(time.perf_counter() - start, 1),
        "date": date.today().isoformat(), "quick": args.quick,
    }  # fmt: skip
    meta = {**run_meta(), **meta}  # command, date, cpu, gpu, versions (benchmarks/meta.py)
    text = markdown(summary, meta)
    print(text)
    if not args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.results / "faithfulness-cpu"
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
