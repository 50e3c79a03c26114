"""The commands: each turns its flags into the library's options, calls the library once, and prints."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..app.faithfulness import Scoring
from ..app.options import Options
from ..core.declare import declarations
from ..core.errors import ConfigError, OcclensError, flag, one_line, option
from ..core.progress import print_above
from ..core.settings import Settings
from .errors import said

# The library's heavier parts (torch among them) are imported inside each command, when it runs: the parser,
# --help, --version and a bad flag answer without them.


def explain_cmd(args: argparse.Namespace) -> int:
    """Explain each IMAGE: write OUT/STEM.png (the figure), OUT/STEM.json and OUT/STEM.npz, print a summary."""
    settings, options = settings_from(args), options_of(args)  # checked before the model loads
    model = model_of(args)
    from ..core.scoring import check_truth, split_labels

    given = None if args.label is None else split_labels(args.label)  # "3;7": a multi-label truth
    label = check_truth(given, None, option("label"), model.labels)
    return explain_and_print(args, model, settings, options, [(Path(p), label) for p in args.images])


def demo_cmd(args: argparse.Namespace) -> int:
    """Explain the bundled sample photos with the default model (their true labels known)."""
    from ..core.samples import samples

    settings, options = settings_from(args), options_of(args)
    model = model_of(args)
    code = explain_and_print(args, model, settings, options, [(s.path, s.label) for s in samples()])
    print(f"\nfigures in {args.out}/ — open the PNGs; red = the region supported the prediction")
    return code


def labels_cmd(args: argparse.Namespace) -> int:
    """Print the model's class names with their indices."""
    from ..models import imagenet_labels, read_labels

    word = (args.grep or "").lower()
    for i, name in enumerate(read_labels(args.labels) if args.labels else imagenet_labels()):
        if word in name.lower():
            print(f"{i}\t{name}")
    return 0


def run_cmd(args: argparse.Namespace) -> int:
    """Explain every image of DATASET into DIR/images/, record each in DIR/manifest.sqlite, write
    DIR/report/index.html and print a summary. Re-running with the same DIR skips finished images."""
    from ..app.runs import run_dataset

    report = run_dataset(args.dataset, args.out, source_of(args), settings_from(args), options_of(args))
    print(report)
    return 2 if report.summary.failed else 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    """Score how faithful each map is, per IMAGE and method: the predicted class's probability as the map's
    most relevant windows or pixels are removed first (MoRF; lower area is better) and last (LeRF; higher is
    better), and SRG = AUC(LeRF) - AUC(MoRF) (higher is better, about 0 for a random map); over the images,
    means with bootstrap 95% intervals and paired tests between methods. Writes OUT/evaluate.csv,
    OUT/summary.csv and OUT/evaluate.png. A run's DIR evaluates the maps the run wrote."""
    from ..app.evaluate import check_request, evaluate_images, image_paths

    paths = image_paths(args.images, args.samples)
    settings = settings_from(args)
    scoring = Scoring(args.methods, args.removal, args.granularity, args.steps, args.bootstrap)
    check_request(paths, scoring)  # before the model loads
    model = model_of(args)
    evaluation = evaluate_images(paths, args.out, model, settings, scoring, args.max_pixels, on_error=say,
                                 progress=progress_of(args))  # fmt: skip
    if evaluation.rows:
        print(evaluation)
        print(f"\nwrote {evaluation.csv}, {evaluation.summary_csv} and {evaluation.png}")
    return 2 if evaluation.errors else 0


def insight_cmd(args: argparse.Namespace) -> int:
    """What the model looks at across the dataset of the run in RUN_DIR, from its stored maps (no forward pass):
    per class (true class K, else predicted Q) and per frequent confusion K -> Q the mean δL map and its spread,
    where the negative mass lies, the maps clustered into strategies (most unusual first); with --boxes or
    --masks how well each map lands on the object (mass inside, pointing game, IoU; per class with bootstrap
    intervals); with --compare how maps and decisions changed against another run. Writes the page insight.html,
    insight.json, maps.npz and CSVs into --out (default RUN_DIR/report/insight)."""
    from ..app.insight import InsightOptions, run_insight

    given = {d.name: getattr(args, d.name) for d in declarations(InsightOptions) if d.flag}
    print(run_insight(args.run_dir, InsightOptions(**given, progress=progress_of(args))))
    return 0


def serve_cmd(args: argparse.Namespace) -> int:
    """Start the interactive viewer: a local web page (and its HTTP API) where you upload an image, or open one
    of RUN_DIR's, watch its δL map arrive (a coarse pass, then the exact map), click a window or draw a region
    to see what the model says without it, and switch the window, fill, engine and explained class. Listens on
    127.0.0.1 unless --host says otherwise; another address needs --token (one is generated and printed)."""
    from ..app.job import check_windows_fit
    from ..serve import UploadLimits, Viewer, check_port, require, serve
    from ..serve.rundir import RunFolder
    from ..serve.viewer import MEGABYTE, takes_volumes

    require()  # before the model loads
    check_port(args.port)
    settings, options = settings_from(args), options_of(args)
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be a positive number, got {args.max_upload_mb}")
    limits = UploadLimits(int(args.max_upload_mb * MEGABYTE), args.max_pixels, args.max_decode_mb, args.decodes)
    run = None if args.run_dir is None else RunFolder.open(args.run_dir)
    from ..models.recognise import with_preprocess

    model = with_preprocess(model_of(args), settings.preprocess)
    if not takes_volumes(model):  # a volume model's windows are checked against each volume
        check_windows_fit(model, settings)
    viewer = Viewer(model, settings, options, limits, run, args.token)
    serve(viewer, args.host, args.port)
    return 0


COMMANDS = {"explain": explain_cmd, "demo": demo_cmd, "labels": labels_cmd, "run": run_cmd, "evaluate": evaluate_cmd,
            "insight": insight_cmd, "serve": serve_cmd}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# flags to the library's options

PREPROCESS_KEYS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order")  # a description's


def source_of(args: argparse.Namespace):
    """The model the flags name (a ModelSource), with the description from --model-config and the flags on top."""
    from ..core.source import DESCRIPTION_KEYS, ModelSource  # no torch: a finished run resumes without it

    description = {}
    if args.model_config:
        from ..models.description import read_description

        description = dict(read_description(args.model_config))
    description |= {k: getattr(args, k) for k in DESCRIPTION_KEYS if getattr(args, k) is not None}
    if getattr(args, "preprocess", None) is not None:  # checked before the model loads
        changed = [k for k in PREPROCESS_KEYS if k in description]
        if changed:
            given = ", ".join(flag(k) if getattr(args, k) is not None else f"{k} in --model-config" for k in changed)
            raise ConfigError(
                f"--preprocess replaces the model's whole preprocessing (resize, crop, mean, std), so it does not go "
                f"with {given}, which change the model's own; give one or the other", option="preprocess",
            )  # fmt: skip
        from ..models.recognise import resolve

        resolve(args.preprocess)  # a weights name torchvision does not know, say
    return ModelSource(args.model, None if args.weights is None else str(args.weights), description or None,
                       args.trust_pickle)  # fmt: skip


def model_of(args: argparse.Namespace):
    """The model the flags name, loaded where --device says."""
    from ..models import pick_device
    from ..models.source import load_source

    return load_source(source_of(args), pick_device(args.device, option("device")))


def settings_from(args: argparse.Namespace) -> Settings:
    """The explanation's settings from the flags generated from their declarations (``output`` comes with the
    model's description)."""
    return Settings(**{d.name: getattr(args, d.name) for d in declarations(Settings) if d.flag})


def options_of(args: argparse.Namespace) -> Options:
    flags = ("target", "top_k", "also_true_class", "compare", "max_pixels", "workers", "force", "ray", "address",
             "gpus_per_worker", "device", "figures", "shared_fs", "intensity")  # fmt: skip
    given = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    return Options(**given, progress=progress_of(args))


def progress_of(args: argparse.Namespace) -> bool | None:
    """-q: no bar and no notes; else a bar when stderr is a terminal (:mod:`occlens.core.progress`)."""
    return False if args.quiet else None


def explain_and_print(args, model, settings: Settings, options: Options, files: list[tuple[Path, int | None]]) -> int:
    """Explain ``files`` into --out and print the summary table; exit 2 if any image failed."""
    from ..app.job import explain_files
    from ..core.targets import resolve_target

    options = replace(options, target=resolve_target(options.target, model.labels))
    rows, errors = explain_files(model, files, args.out, settings, options, on_error=say)
    if rows and model.random_weights:
        print(f"model {model.name}: random weights (no trained weights were given), so these predictions mean nothing")
    print_table(rows, model.labels, args.out, options.top_k, options.target)
    return 2 if errors else 0


def say(err: Exception) -> None:
    """One image's error, on one line of stderr, as it happens (above the bar, if one is drawn)."""
    print_above(f"occlens: error: {one_line(said(err) if isinstance(err, OcclensError) else str(err))}")


def print_table(rows, labels, out: Path, top_k: int, target=None) -> None:
    """One row per image; with ``target`` (as resolved: a class index or a target value) a column of what was
    explained, and the sign's words follow it; with every class's map, what the model says instead."""
    from ..app.summary import explained_words, sign_note

    if not rows:
        return
    explained = "" if target is None else f" {'explained':<20}"
    header = f"{'image':<16} {'predicted Q':<28} {'true K':<24}{explained} {'ok':<3} {'L':>7} {'min δL':>8} {'s':>6}"
    print(header)
    print("-" * len(header))
    for stem, r in rows:
        q = "-" if r.predicted is None else f"{labels[r.predicted][:18]} ({r.probabilities[r.predicted]:.2f})"
        truth = r.true_labels or (() if r.label is None else (r.label,))
        k = ";".join(labels[c] for c in truth)[:24] or "-"
        x = "" if target is None else f" {(labels[r.target] if isinstance(r.target, int) else r.target)[:20]:<20}"
        ok = {True: "yes", False: "NO", None: "-"}[r.correct]
        print(f"{stem[:16]:<16} {q:<28} {k:<24}{x} {ok:<3} {r.loss:>7.3f} {r.delta.min():>8.3f} {r.seconds:>6.1f}")
    if top_k > 0:
        for stem, r in rows:
            if r.top_k(top_k):  # a model with class scores (not a segmenter's)
                print(f"{stem}: top-{top_k}: " + ", ".join(f"{labels[c]} {p:.3f}" for c, p in r.top_k(top_k)))
    for stem, r in rows:
        if r.flip_map is not None:  # --all-classes
            print(f"{stem}: {flips_text(r, labels)}")
    words = explained_words(target, labels, rows[0][1].target_kind)
    print(f"wrote {len(rows)} x (.png .json .npz) to {out}/  {sign_note(words)}")


def flips_text(result, labels) -> str:
    """What the model says instead where a window is occluded: "12 of 196 windows change the prediction, to
    tabby (7), Egyptian cat (5)"."""
    changed = f"{result.flips} of {result.windows} windows change the prediction"
    instead = result.instead(5)
    if not instead:
        return changed
    rest = result.flips - sum(n for _, n in instead)
    to = ", ".join(f"{labels[c]} ({n})" for c, n in instead) + (f", other classes ({rest})" if rest else "")
    return f"{changed}, to {to}"
