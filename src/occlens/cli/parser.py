"""The ``occlens`` command's argument parsers: flags only; what they mean is the library's."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..app.faithfulness import Scoring
from ..app.insight import InsightOptions
from ..app.options import Options
from ..core import checks
from ..core.checks import OUTPUTS
from ..core.declare import Declaration, declarations
from ..core.settings import Settings
from ..serve.limits import UploadLimits

DEFAULT_OUT = "occlens-out"
QUIET = (
    "no progress bar and no notes on stderr: errors and warnings only, the results on stdout as ever (without -q "
    "a bar is drawn on a terminal only, never into a log)"
)


class HelpFormat(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help with its default, where it has one: not "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line saying what was wrong and where to look."""

    def error(self, message: str):
        self.exit(2, f"occlens: error: {self.prog}: {message}; see {self.prog} --help\n")


def parser(commands) -> argparse.ArgumentParser:
    """The whole command line; ``commands`` maps each sub-command's name to the function that runs it."""
    top = Parser(
        prog="occlens",
        description="Occlusion sensitivity maps: slide a gray block over an image and map how the loss of the "
        "predicted class changes. Negative δL = the region supported the prediction.",
        formatter_class=HelpFormat,
    )
    top.add_argument("--version", action="version", version=f"occlens {__version__}")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        run = commands[name]
        p = sub.add_parser(name, help=help, formatter_class=HelpFormat, description=run.__doc__)
        p.set_defaults(run=run)
        p.add_argument("-q", "--quiet", action="store_true", help=QUIET)  # every command's, here only
        return p

    ex = command("explain", "explain image files")
    ex.add_argument("images", nargs="+", type=input_path, metavar="IMAGE", help="image files (any format Pillow reads)")
    ex.add_argument(
        "--label",
        help="true class K of the images, index or name (e.g. 281 or tabby); several, for a sigmoid head: '3;7'",
    )
    add_per_image(ex)
    add_declared(ex, Options, ("compare",))
    add_common(ex)
    add_intensity(ex)

    demo = command("demo", "explain the bundled sample photos")
    add_common(demo)

    lab = command("labels", "list the model's class names")
    lab.add_argument("--grep", metavar="WORD", help="only names containing WORD (case-insensitive)")
    lab.add_argument("--labels", help="a labels file to list instead of ImageNet's")

    run = command("run", "explain a dataset (resumable) and write an HTML report")
    run.add_argument(
        "dataset", type=Path, metavar="DATASET", help="ImageFolder folder, path,label CSV, or image folder"
    )
    add_per_image(run)
    add_declared(run, Options, ("figures", "workers", "force"))
    cluster = run.add_argument_group("Ray cluster (see README, 'Runs on a Ray cluster')")
    add_declared(cluster, Options, tuple(d.name for d in declarations(Options) if d.group == "ray"))
    add_common(run)
    add_intensity(run)
    out = next(a for a in run._actions if a.dest == "out")  # add_common's --out, required here
    out.required, out.default, out.help = True, argparse.SUPPRESS, "output folder DIR (the same DIR resumes a run)"

    ev = command("evaluate", "faithfulness (MoRF/LeRF AUC, SRG) of occlusion, saliency and random maps")
    ev.add_argument(
        "images", nargs="*", type=input_path, metavar="IMAGE|DIR",
        help="image files (any format Pillow reads), or the DIR of an `occlens run` (its maps are used as written)",
    )  # fmt: skip
    ev.add_argument("--samples", action="store_true", help="also evaluate the bundled sample photos")
    add_declared(ev, Scoring)
    add_common(ev)

    ins = command("insight", "what the model looks at across a run's dataset: per-class maps, strategies, ground truth")
    ins.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the DIR of an `occlens run` (finished or going)")
    add_declared(ins, InsightOptions)

    sv = command("serve", "an interactive viewer in the browser: occlude what you choose (needs occlens[serve])")
    add_serve(sv)
    sv.set_defaults(own_ctrl_c=True)  # uvicorn stops the server on the first Ctrl-C (no "second Ctrl-C" guard)
    add_common(sv, out=False)
    return top


def add_serve(p: argparse.ArgumentParser) -> None:
    """``occlens serve``'s own flags (``occlens.serve``); the model and window flags are add_common's."""
    p.add_argument(
        "run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="the DIR of an `occlens run`: browse its images"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than loopback needs a token)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0: a free one)")
    p.add_argument(
        "--token", help="secret every request must bring (default: none on loopback, generated and printed otherwise)"
    )
    p.add_argument("--max-upload-mb", type=float, default=32, help="largest request body accepted, in MB")
    add_declared(p, UploadLimits)  # the decoding's memory budget and width


def add_per_image(p: argparse.ArgumentParser) -> None:
    """What each image's job records and draws (``occlens.app.options.Options``)."""
    add_declared(p, Options, ("target", "also_true_class", "top_k"))


def add_common(p: argparse.ArgumentParser, out: bool = True) -> None:
    """The model flags (``occlens.load_model``) and the explanation's (``occlens.Settings``); ``out``: --out too."""
    m = p.add_argument_group("model (see README, 'Your own model')")
    m.add_argument(
        "--model",
        default="default",
        help="'default' (EfficientNet-Lite0, ImageNet), torchvision:NAME, timm:NAME, a TorchScript or .onnx file",
    )
    m.add_argument(
        "--weights", type=Path,
        help="state-dict file for a torchvision:NAME or timm:NAME architecture ('random': its random weights, on "
        "purpose; without --weights it has them too, with a warning)",
    )  # fmt: skip
    m.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow files that need full unpickling (this can run code from the file; only for files you trust)",
    )
    m.add_argument(
        "--model-config", type=Path, help="JSON/TOML model description (default: MODEL.json/.toml beside it)"
    )
    m.add_argument("--labels", help="class names: a text file (one per line) or a JSON list/object")
    m.add_argument("--input-size", type=size_pair, help="model input size: N or H,W")
    m.add_argument("--resize", type=int, help="shorter side before the centre crop")
    m.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize interpolation")
    m.add_argument("--mean", type=floats, help="normalisation mean, e.g. 0.485,0.456,0.406")
    m.add_argument("--std", type=floats, help="normalisation std, e.g. 0.229,0.224,0.225")
    m.add_argument("--channel-order", choices=["RGB", "BGR"], help="the model's channel order")
    m.add_argument(
        "--output",
        choices=list(OUTPUTS),
        help="what the model returns: logits (softmax), probs, log_probs, or sigmoid (multi-label: each class its "
        "own sigmoid); a model with one output is a binary classifier",
    )
    m.add_argument("--num-classes", type=int, help="classes of a torchvision/timm architecture (default: its own)")
    add_declared(p, Settings)
    add_declared(p, Options, ("device",))
    if out:
        p.add_argument("--out", type=folder, default=Path(DEFAULT_OUT), help="output folder")
    add_declared(p, Options, ("max_pixels",))


def add_declared(p: argparse._ActionsContainer, carrier, names: tuple[str, ...] | None = None) -> None:
    """A flag for each option ``carrier`` declares (all it offers on the command line, or those ``names``), its
    type, default, choices and help taken from the declaration (:mod:`occlens.core.declare`)."""
    for d in declarations(carrier):
        if not d.flag or (names is not None and d.name not in names):
            continue
        if d.switch:
            p.add_argument(d.flag_name, action="store_true", help=d.help)
        else:
            default = ",".join(d.default) if isinstance(d.default, tuple) and d.parse is None else d.default
            p.add_argument(d.flag_name, type=typed(d), default=default, choices=d.choices, metavar=d.metavar,
                           help=d.help)  # fmt: skip


def typed(d: Declaration):
    """argparse's type for a declared option: its parse alone (text to a value); the value is checked once, where
    it enters the library, when the command builds its settings. None: the text itself."""
    read = d.parse
    if read is None or read in (int, float):
        return read  # argparse says "invalid int value: 'x'" itself

    def parse(text: str):
        try:
            return read(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = d.name
    return parse


def add_intensity(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--intensity", type=typed_intensity, metavar="PRESET|LOW,HIGH",
        help="the intensity window of a volume or band image (NIfTI, DICOM folder, TIFF with --patch bands) to "
        "[0, 1]: ct-soft-tissue, ct-lung, ct-bone, ct-brain, mr (its 0.5-99.5th percentiles) or LOW,HIGH "
        "(--intensity=-100,300)",
    )  # fmt: skip


def typed_intensity(text: str):
    try:
        return checks.intensity_text(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def size_pair(text: str) -> tuple[Any, ...] | str:
    """``--input-size`` as :func:`~occlens.core.checks.int_pair` reads it; the description checks it is a pair."""
    try:
        return checks.int_pair(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def missing_folders(out: str | os.PathLike | None) -> list[Path]:
    """The folders of the path ``out`` that do not exist yet, innermost first."""
    missing = []
    folder = Path(out) if out is not None else None
    try:
        while folder is not None and not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
    except OSError:  # a name too long to look up: the command says so when it makes the folder
        pass
    return missing


def input_path(text: str) -> str:
    """An input's path as typed, not an empty string (which names no file)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected the path of an image file, got an empty string")
    return text


def folder(text: str) -> Path:
    """An output folder: a path, not an empty string (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty string (use . for the current folder)")
    return Path(text)
