"""The ``occlens`` command: a thin layer over :func:`occlens.explain` and :func:`occlens.plot`.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..analysis.saliency import saliency_rows
from ..app.progress import Bar
from ..core.errors import ConfigError, OcclensError
from ..core.files import atomic_write
from ..engines.memory import keep_freed_blocks
from ..explain import explain

DEFAULT_OUT = "occlens-out"


def command() -> int:
    """The ``occlens`` command: :func:`main` in a process of its own, with glibc told to keep freed
    large blocks (see :mod:`occlens.allocator`: a dense run of the default model on 2 CPU cores
    took 6.1 s instead of 10.2 s)."""
    keep_freed_blocks()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = parser().parse_args(argv)
    fresh = _missing_folders(getattr(args, "out", None))
    try:
        return args.run(args)
    except OcclensError as err:
        print(f"occlens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("occlens: interrupted; files already written are complete, nothing partial was left", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("OCCLENS_DEBUG"):
            raise
        print(
            f"occlens: internal error: {type(err).__name__}: {err} "
            "(OCCLENS_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        for folder in fresh:  # folders this run made and left empty (every image failed, say) go again
            try:
                folder.rmdir()
            except OSError:  # not empty (something was written), or gone: leave it
                break


def _missing_folders(out) -> list[Path]:
    """The folders of the path ``out`` that do not exist yet, innermost first."""
    missing = []
    folder = Path(out) if out is not None else None
    while folder is not None and not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line saying what was wrong and where to look."""

    def error(self, message: str):
        self.exit(2, f"occlens: error: {self.prog}: {message}; see {self.prog} --help\n")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    top = Parser(
        prog="occlens",
        description="Occlusion sensitivity maps: slide a gray block over an image and map how the loss of the "
        "predicted class changes. Negative δL = the region supported the prediction.",
        formatter_class=fmt,
    )
    top.add_argument("--version", action="version", version=f"occlens {__version__}")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", required=True)

    ex = sub.add_parser("explain", help="explain image files", formatter_class=fmt, description=explain_cmd.__doc__)
    ex.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    ex.add_argument("--label", help="true class K of the images, index or ImageNet name (e.g. 281 or tabby)")
    ex.add_argument("--target", help="explain this class instead of the prediction Q (index or name)")
    ex.add_argument(
        "--also-true-class",
        action="store_true",
        help="draw the map of the true class K too (done anyway when K differs from Q)",
    )
    ex.add_argument("--top-k", type=int, default=5, help="how many top classes to print and record")
    ex.add_argument(
        "--compare", action="store_true", help="add the gradient saliency map (a backward-pass method) to the figure"
    )
    add_common(ex)
    ex.set_defaults(run=explain_cmd)

    demo = sub.add_parser(
        "demo", help="explain the bundled sample photos", formatter_class=fmt, description=demo_cmd.__doc__
    )
    add_common(demo)
    demo.set_defaults(run=demo_cmd, top_k=5, also_true_class=False, target=None, compare=False)

    lab = sub.add_parser("labels", help="list the model's class names", formatter_class=fmt)
    lab.add_argument("--grep", metavar="WORD", help="only names containing WORD (case-insensitive)")
    lab.add_argument("--labels", help="a labels file to list instead of ImageNet's")
    lab.set_defaults(run=labels_cmd)

    from ..app.runs import add_run_parser  # imported here: runs builds on this module

    add_run_parser(sub)

    from ..app.evaluate import add_parser as add_evaluate  # imported here: evaluate builds on this module

    add_evaluate(sub)
    return top


def add_common(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model (see README, 'Your own model')")
    m.add_argument(
        "--model",
        default="default",
        help="'default' (EfficientNet-Lite0, ImageNet), torchvision:NAME, timm:NAME, a TorchScript or .onnx file",
    )
    m.add_argument("--weights", type=Path, help="state-dict file for a torchvision:NAME or timm:NAME architecture")
    m.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow files that need full unpickling (this can run code from the file; only for files you trust)",
    )
    m.add_argument(
        "--model-config", type=Path, help="JSON/TOML model description (default: MODEL.json/.toml beside it)"
    )
    m.add_argument("--labels", help="class names: a text file (one per line) or a JSON list/object")
    m.add_argument("--input-size", type=int_pair, help="model input size: N or H,W")
    m.add_argument("--resize", type=int, help="shorter side before the centre crop")
    m.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize interpolation")
    m.add_argument("--mean", type=floats, help="normalisation mean, e.g. 0.485,0.456,0.406")
    m.add_argument("--std", type=floats, help="normalisation std, e.g. 0.229,0.224,0.225")
    m.add_argument("--channel-order", choices=["RGB", "BGR"], help="the model's channel order")
    m.add_argument("--output", choices=["logits", "probs", "log_probs"], help="what the model returns")
    m.add_argument("--num-classes", type=int, help="classes of a torchvision/timm architecture (default: its own)")
    p.add_argument("--patch", type=int_pair, default=(16, 16), help="window size: N or H,W pixels")
    p.add_argument("--stride", type=int_pair, default=None, help="window step: N or H,W (default: the patch size)")
    p.add_argument("--fill", default="gray", help="gray | mean | black | blur | noise | a value in [0,1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise fill")
    p.add_argument("--batch-size", type=int, default=None, help="occluded images per forward pass (default: automatic)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="fp32 is exact; bf16/fp16 run the model under autocast (faster, approximate)",
    )
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile (pays off on long runs)")
    p.add_argument(
        "--engine",
        choices=["dense", "incremental", "auto"],
        default=None,
        help="incremental recomputes only what each window changes (exact; CNNs); auto uses it where it pays "
        "(default: dense, auto with --fast)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="approximate: score a checkerboard of windows, then more where the map is rough, the rest interpolated",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="output folder")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image accepted, in pixels (default: Pillow's decompression-bomb limit; 0 = no limit)",
    )


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_pair(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W (integers), got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")


def explain_cmd(args: argparse.Namespace) -> int:
    """Explain each IMAGE: write OUT/STEM.png (the figure), OUT/STEM.json and OUT/STEM.npz, print a summary."""
    model = load_model(args)
    label = class_index(args.label, model.labels, "--label")
    jobs = [(Path(p), label) for p in args.images]
    return run_jobs(args, model, jobs)


def demo_cmd(args: argparse.Namespace) -> int:
    """Explain the bundled sample photos with the default model (their true labels known)."""
    from ..core.samples import samples

    model = load_model(args)
    jobs = [(s.path, s.label) for s in samples()]
    code = run_jobs(args, model, jobs)
    print(f"\nfigures in {args.out}/ — open the PNGs; red = the region supported the prediction")
    return code


def labels_cmd(args: argparse.Namespace) -> int:
    from ..models import imagenet_labels, read_labels

    word = (args.grep or "").lower()
    for i, name in enumerate(read_labels(args.labels) if args.labels else imagenet_labels()):
        if word in name.lower():
            print(f"{i}\t{name}")
    return 0


DESCRIPTION_FLAGS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order", "output", "labels",
                     "num_classes")  # fmt: skip


def load_model(args: argparse.Namespace):
    """The model the flags name, with the description from --model-config and the flags on top."""
    from ..models import load_model as load
    from ..models.load import read_description

    description = dict(read_description(args.model_config)) if args.model_config else {}
    description |= {k: getattr(args, k) for k in DESCRIPTION_FLAGS if getattr(args, k) is not None}
    return load(args.model, args.weights, description=description or None, trust_pickle=args.trust_pickle,
                device=pick_device(args.device))  # fmt: skip


def pick_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device must be cpu or cuda (or cuda:N), got {device!r}")
    return device


def class_index(text: str | None, names: Sequence[str], option: str) -> int | None:
    """An index or a class name (case-insensitive) to an index; unknown names get suggestions."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < len(names):
            raise ConfigError(f"{option} {k} is out of range: the model has {len(names)} classes (0..{len(names) - 1})")
        return k
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text.lower(), lowered, n=4, cutoff=0.6)
    close += [n for n in lowered if text.lower() in n and n not in close][: 6 - len(close)]
    hint = f"; did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close else ""
    raise ConfigError(
        f"{option} {text!r} is not a class name{hint} "
        f"(occlens labels --grep WORD lists the names; add --labels FILE for your own)"
    )


def prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".occlens-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to output folder {out}: {err.strerror or err}; choose another with --out"
        ) from None


def unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return stems


def run_jobs(args: argparse.Namespace, model, jobs: list[tuple[Path, int | None]]) -> int:
    """Explain each (path, label); bad images are reported and skipped. Exit 2 if any failed."""
    from ..core.image import read_image

    target = class_index(args.target, model.labels, "--target")
    prepare_out(args.out)
    rows, failed = [], 0
    for (path, label), stem in zip(jobs, unique_stems([p for p, _ in jobs]), strict=True):
        bar = Bar(path.name)
        try:
            start = time.perf_counter()
            image = model.preprocess(read_image(path, max_pixels=args.max_pixels))
            result = explain_image(args, model, image, label, target, bar)
            bar.close()
            result = annotate(result, model, path, args.top_k, time.perf_counter() - start)
            compare = saliency_rows(model.module, image, result, output=model.output) if args.compare else None
            write_outputs(result, image, model.labels, args.out / stem, args.also_true_class or None, compare)
        except OcclensError as err:
            bar.close()
            print(f"occlens: error: {err}", file=sys.stderr)
            failed += 1
            continue
        rows.append((stem, result))
    print_summary(rows, model.labels, args.out, args.top_k)
    return 2 if failed else 0


def explain_image(args: argparse.Namespace, model, image, label: int | None, target: int | None, progress=None):
    """:func:`occlens.explain` on one preprocessed image with the command line's settings (explain, demo, run)."""
    return explain(
        model.module, image, label, patch=args.patch, stride=args.stride, fill=args.fill,
        output=model.output, target=target, batch_size=args.batch_size, seed=args.seed, progress=progress,
        precision=args.precision, compile=args.compile, engine=args.engine, fast=args.fast,
    )  # fmt: skip


def annotate(result, model, path: Path, top_k: int, seconds: float):
    names = model.labels
    return result.with_meta(
        model=model.name,
        image=str(path),
        predicted_name=names[result.predicted],
        label_name=None if result.label is None else names[result.label],
        target_name=names[result.target],
        top_k=[{"class": c, "name": names[c], "probability": p} for c, p in result.top_k(max(top_k, 0))],
        timings={"explain_s": result.seconds, "total_s": seconds},
    )


def write_outputs(result, image, labels: Sequence[str], stem: Path, true_class: bool | None, saliency=None) -> None:
    """STEM.png, then STEM.npz and STEM.json; each written to a temporary name and renamed."""
    from ..present.figure import plot

    figure = plot(result, image, labels=labels, true_class=true_class, saliency=saliency)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    atomic_write(stem.with_name(stem.name + ".png"), lambda f: f.write(png.getvalue()))
    result.save(stem)


def print_summary(rows, labels: Sequence[str], out: Path, top_k: int) -> None:
    if not rows:
        return
    header = f"{'image':<16} {'predicted Q':<28} {'true K':<24} {'ok':<3} {'L':>7} {'min δL':>8} {'s':>6}"
    print(header)
    print("-" * len(header))
    for stem, r in rows:
        q = f"{labels[r.predicted][:18]} ({r.probabilities[r.predicted]:.2f})"
        k = "-" if r.label is None else labels[r.label][:24]
        ok = {True: "yes", False: "NO", None: "-"}[r.correct]
        print(f"{stem[:16]:<16} {q:<28} {k:<24} {ok:<3} {r.loss:>7.3f} {r.delta.min():>8.3f} {r.seconds:>6.1f}")
    if top_k > 0:
        for stem, r in rows:
            print(f"{stem}: top-{top_k}: " + ", ".join(f"{labels[c]} {p:.3f}" for c, p in r.top_k(top_k)))
    print(f"wrote {len(rows)} x (.png .json .npz) to {out}/  (δL < 0: the window supported the prediction)")
