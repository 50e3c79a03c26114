"""What the evaluate job shows and writes: the Markdown tables, ``evaluate.csv``, ``summary.csv`` and the
figure ``evaluate.png`` (intervals over the images, mean curves, each image's curves)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..analysis.metrics import Curve
    from .evaluate import Scored
    from .faithfulness import Scoring

COLUMNS = ("image", "predicted", "predicted_name", "probability", "target", "method", "first", "removal",
           "granularity", "steps", "morf_auc", "lerf_auc", "srg")  # fmt: skip
SUMMARY_COLUMNS = ("score", "method", "versus", "images", "mean", "ci_low", "ci_high", "p_value")
TITLES = {"srg": "SRG ↑", "morf_auc": "MoRF AUC ↓", "lerf_auc": "LeRF AUC ↑"}
MAX_PNG_IMAGES = 12  # images drawn one row each in evaluate.png (all of them are in the CSV)
REMOVAL_NAMES = {"gray": "gray (0.5)", "blur": "blurred copy", "road": "ROAD noisy linear imputation"}


def setup(scoring: Scoring, rows: Sequence[dict]) -> str:
    removal, steps = REMOVAL_NAMES[scoring.removal], rows[0]["steps"] if rows else scoring.steps
    return f"removal: {removal}; removed by {scoring.granularity}, {steps} steps per curve"


def caption(scoring: Scoring, rows: Sequence[dict]) -> str:
    return (
        f"{setup(scoring, rows)}. MoRF: most relevant first (lower AUC is better); LeRF: least relevant first (higher "
        f"is better); SRG = AUC(LeRF) - AUC(MoRF) (higher is better, about 0 for a random map)"
    )


def table(rows: Sequence[dict], summary: Sequence[dict], scoring: Scoring) -> str:
    """The caption, one line per image and method, then (for several images) each method's mean with its
    95% interval and the paired differences between methods with their p-values."""
    lines = [
        caption(scoring, rows),
        "",
        "| image | predicted Q (p) | method | MoRF AUC ↓ | LeRF AUC ↑ | SRG ↑ |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        q = f"{r['predicted_name']} ({r['probability']:.2f})"
        scores = " | ".join(f"{r[s]:.3f}" for s in ("morf_auc", "lerf_auc", "srg"))
        lines.append(f"| {r['image']} | {q} | {r['method']} | {scores} |")
    images = len({r["image"] for r in rows})
    if images < 2:
        return "\n".join(lines)
    means = {(s["score"], s["method"]): s for s in summary if not s["versus"]}
    for m in scoring.methods:
        cells = " | ".join(with_interval(means[(score, m)]) for score in ("morf_auc", "lerf_auc", "srg"))
        lines.append(f"| **mean of {images}** [95% CI] | | {m} | {cells} |")
    pairs = [s for s in summary if s["versus"] and s["score"] == "srg"]
    if pairs:
        deletion = {(s["method"], s["versus"]): s for s in summary if s["versus"] and s["score"] == "morf_auc"}
        lines += [
            "",
            "| paired over the images | SRG difference [95% CI] | p | MoRF AUC difference [95% CI] | p |",
            "|---|---:|---:|---:|---:|",
        ]
        for s in pairs:
            d = deletion[(s["method"], s["versus"])]
            lines.append(
                f"| {s['method']} − {s['versus']} | {with_interval(s, signed=True)} | {p_text(s['p_value'])} | "
                f"{with_interval(d, signed=True)} | {p_text(d['p_value'])} |"
            )
        smallest = 2 / 2**images
        note = f"; {images} images cannot give p < {smallest:.3g}" if smallest > 0.001 else ""
        lines.append(f"\np: two-sided paired sign-flip test of the mean difference over the {images} images{note}")
    return "\n".join(lines)


def with_interval(s: dict, signed: bool = False) -> str:
    mean = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    if math.isnan(s["ci_low"]):
        return mean
    return f"{mean} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def p_text(p: float | None) -> str:
    return "-" if p is None or math.isnan(p) else f"{p:.3g}"


def cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def write_rows(rows: Sequence[dict], columns: Sequence[str], path: Path) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(row[k]) for k in columns})
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """One row per image and method (:data:`COLUMNS`)."""
    return write_rows(rows, COLUMNS, path)


def write_summary(summary: Sequence[dict], path: Path) -> Path:
    """One row per score and method (``versus`` empty), then per score and pair of methods: the mean
    difference ``method - versus`` over the images, its 95% interval and the paired test's p-value."""
    return write_rows(summary, SUMMARY_COLUMNS, path)


def write_png(
    curves: Sequence[tuple[str, Sequence[Scored]]],
    rows: Sequence[dict],
    summary: Sequence[dict],
    labels: Sequence[str],
    scoring: Scoring,
    path: Path,
) -> Path:
    """Row 1: each method's mean SRG and MoRF AUC with 95% intervals and the paired test against the random
    map (or the last method); row 2: the mean MoRF and LeRF curves; then one row per image (the first
    :data:`MAX_PNG_IMAGES`): its MoRF and LeRF curves."""
    from matplotlib.figure import Figure

    shown = curves[:MAX_PNG_IMAGES]
    fig = Figure(figsize=(10, 3.1 * (2 + len(shown)) + 0.6), layout="constrained")
    axes = fig.subplots(2 + len(shown), 2, squeeze=False)
    more = f" (images drawn: the first {len(shown)} of {len(curves)})" if len(curves) > len(shown) else ""
    fig.suptitle(setup(scoring, rows) + more, fontsize=9)
    methods = scoring.methods
    means = {(s["score"], s["method"]): s for s in summary if not s["versus"]}
    pairs = {(s["score"], s["method"], s["versus"]): s for s in summary if s["versus"]}
    reference = "random" if "random" in methods else methods[-1]  # each bar's paired test is against it
    for ax, score in zip(axes[0], ("srg", "morf_auc"), strict=True):
        m = [means[(score, k)] for k in methods]
        y = np.arange(len(methods))
        centre = np.array([s["mean"] for s in m])
        low, high = (np.array([s[k] for s in m]) for k in ("ci_low", "ci_high"))
        low, high = np.where(np.isnan(low), centre, low), np.where(np.isnan(high), centre, high)  # no intervals
        ax.barh(y, centre, color="#9ab", height=0.5)
        ax.errorbar(centre, y, xerr=[centre - low, high - centre], fmt="none", ecolor="k", capsize=4)
        for i, k in enumerate(methods):
            pair = pairs.get((score, k, reference)) or pairs.get((score, reference, k))
            if pair is not None:
                sign = 1 if pair["method"] == k else -1
                ax.annotate(f"vs {reference}: {sign * pair['mean']:+.3f}, p = {p_text(pair['p_value'])}", (0, i),
                            xytext=(4, 9), textcoords="offset points", fontsize=7)  # fmt: skip
        ax.set_yticks(y, methods, fontsize=8)
        ax.invert_yaxis()  # the first method on top
        ax.axvline(0, color="k", lw=0.6)
        what = "higher is better" if score == "srg" else "lower is better"
        ax.set_title(f"{TITLES[score]} ({what}): mean over {len(curves)} image(s), 95% interval", fontsize=9,
                     parse_math=False)  # fmt: skip
    for ax, order in zip(axes[1], ("morf", "lerf"), strict=True):
        for i, method in enumerate(methods):
            f = getattr(curves[0][1][i][4], order).fractions
            mean = np.mean([np.interp(f, *_xy(getattr(c[i][4], order))) for _, c in curves], axis=0)  # same f
            ax.plot(f, mean, label=method)
        _style(ax, f"{order.replace('morf', 'MoRF').replace('lerf', 'LeRF')}: mean over {len(curves)} image(s)",
               "P(y = class)")  # fmt: skip
    for (stem, scored), row in zip(shown, axes[2:], strict=True):
        name = labels[scored[0][4].morf.cls]
        for ax, order in zip(row, ("morf", "lerf"), strict=True):
            for method, *_, c in scored:
                curve = getattr(c, order)
                ax.plot(curve.fractions, curve.scores, label=f"{method} (AUC {curve.auc:.3f}, SRG {c.srg:+.3f})")
            _style(ax, f"{stem}: {ORDER_TITLES[order]}", f"P(y = {name})")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return atomic_write(path, lambda f: f.write(png.getvalue()))


ORDER_TITLES = {"morf": "MoRF, most relevant removed first (lower AUC is better)",
                "lerf": "LeRF, least relevant removed first (higher AUC is better)"}  # fmt: skip


def _xy(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    return curve.fractions, curve.scores


def _style(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.set_xlabel("fraction of pixels removed", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8, parse_math=False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
