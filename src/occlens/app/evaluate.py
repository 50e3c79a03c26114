"""``occlens evaluate``: deletion and insertion AUC per image and method, as a table, a CSV and a PNG of curves."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from ..analysis.metrics import Curve, deletion_auc, insertion_auc, random_map
from ..core.errors import ConfigError, OcclensError

METHODS = ("occlusion", "saliency", "gradient_x_input", "random")
DEFAULT_METHODS = "occlusion,saliency,random"
CSV_NAME, PNG_NAME = "evaluate.csv", "evaluate.png"
COLUMNS = ("image", "predicted", "predicted_name", "probability", "method", "first", "steps", "deletion_auc",
           "insertion_auc")  # fmt: skip


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``occlens evaluate`` on the ``occlens`` command's subparsers."""
    from ..cli import add_common

    p = subparsers.add_parser(
        "evaluate",
        help="deletion/insertion AUC of occlusion, saliency and random maps",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=evaluate_cmd.__doc__,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--samples", action="store_true", help="also evaluate the bundled sample photos")
    p.add_argument(
        "--methods",
        type=methods_list,
        default=DEFAULT_METHODS,
        help=f"comma-separated, from {', '.join(METHODS)} (saliency = gradient)",
    )
    p.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (steps + 1 forward passes each)")
    add_common(p)
    p.set_defaults(run=evaluate_cmd)
    return p


def methods_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method {unknown[0] if unknown else text!r}; use {', '.join(METHODS)}"
        )
    return names


def evaluate_cmd(args: argparse.Namespace) -> int:
    """Score how faithful each map is: deletion AUC (pixels removed to gray, most supporting first; lower is
    better) and insertion AUC (pixels revealed from a blurred copy; higher is better) of the predicted class's
    probability, per IMAGE and method. Writes OUT/evaluate.csv and OUT/evaluate.png (the curves)."""
    from ..cli import load_model, prepare_out, unique_stems
    from ..core.image import read_image
    from ..core.samples import samples

    paths = [Path(p) for p in args.images] + ([s.path for s in samples()] if args.samples else [])
    if not paths:
        raise ConfigError("no images to evaluate; give IMAGE files, or --samples for the bundled photos")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    model = load_model(args)
    prepare_out(args.out)
    rows, curves, failed = [], [], 0
    for path, stem in zip(paths, unique_stems(paths), strict=True):
        try:
            image = model.preprocess(read_image(path, max_pixels=args.max_pixels))
            per_method = [(m, *evaluate_image(args, model, image, m)) for m in args.methods]
        except OcclensError as err:
            print(f"occlens: error: {err}", file=sys.stderr)
            failed += 1
            continue
        curves.append((stem, per_method))
        for method, first, deletion, insertion, probability in per_method:
            rows.append({
                "image": stem, "predicted": deletion.cls, "predicted_name": model.labels[deletion.cls],
                "probability": probability, "method": method, "first": first, "steps": args.steps,
                "deletion_auc": deletion.auc, "insertion_auc": insertion.auc,
            })  # fmt: skip
    if rows:
        write_csv(rows, args.out / CSV_NAME)
        write_png(curves, model.labels, args.out / PNG_NAME)
        print(table(rows, args.methods))
        print(f"\nwrote {args.out / CSV_NAME} and {args.out / PNG_NAME}")
    return 2 if failed else 0


def evaluate_image(args: argparse.Namespace, model, image, method: str) -> tuple[str, Curve, Curve, float]:
    """``(first, deletion curve, insertion curve, P(Q))`` of one method's map on one image."""
    from ..analysis.saliency import saliency
    from ..cli import explain_image

    if method == "occlusion":  # with the command line's window, fill, precision and compile settings
        pixel_map, first = explain_image(args, model, image, None, None).pixel_map, "lowest"  # δL < 0 supports Q
    elif method == "random":
        pixel_map, first = random_map(image.shape[1], image.shape[2], args.seed), "highest"
    else:
        kind = "gradient" if method == "saliency" else method
        pixel_map, first = saliency(model.module, image, method=kind, output=model.output), "highest"
    deletion = deletion_auc(model.module, image, pixel_map, first=first, steps=args.steps, output=model.output,
                            batch_size=args.batch_size)  # fmt: skip
    insertion = insertion_auc(model.module, image, pixel_map, first=first, steps=args.steps, output=model.output,
                              batch_size=args.batch_size)  # fmt: skip
    return first, deletion, insertion, float(insertion.scores[-1])


def write_csv(rows: list[dict], path: Path) -> None:
    from ..core.files import atomic_write

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def table(rows: list[dict], methods: Sequence[str]) -> str:
    """A Markdown table: one line per image and method, then the mean over images per method."""
    lines = [
        "| image | predicted Q (p) | method | deletion AUC ↓ | insertion AUC ↑ |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        q = f"{r['predicted_name']} ({r['probability']:.2f})"
        lines.append(f"| {r['image']} | {q} | {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} |")
    images = len({r["image"] for r in rows})
    if images > 1:
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            deletion = sum(r["deletion_auc"] for r in mine) / len(mine)
            insertion = sum(r["insertion_auc"] for r in mine) / len(mine)
            lines.append(f"| **mean of {images}** | | {m} | {deletion:.3f} | {insertion:.3f} |")
    return "\n".join(lines)


def write_png(curves, labels: Sequence[str], path: Path) -> None:
    """One row per image: deletion curves left, insertion curves right, one line per method."""
    from matplotlib.figure import Figure

    from ..core.files import atomic_write

    fig = Figure(figsize=(9, 3.2 * len(curves) + 0.4), layout="constrained")
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for (stem, per_method), row in zip(curves, axes, strict=True):
        for method, _, deletion, insertion, _ in per_method:
            for ax, curve in zip(row, (deletion, insertion), strict=True):
                ax.plot(curve.fractions, curve.scores, label=f"{method} (AUC {curve.auc:.3f})")
        name = labels[per_method[0][2].cls]
        for ax, what in zip(row, ("deletion (to gray): lower AUC is better",
                                  "insertion (from blur): higher AUC is better"), strict=True):  # fmt: skip
            ax.set_title(f"{stem}: {what}", fontsize=9)
            ax.set_xlabel("fraction of pixels changed, most supporting first", fontsize=8)
            ax.set_ylabel(f"P(y = {name})", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=8)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(png.getvalue()))
