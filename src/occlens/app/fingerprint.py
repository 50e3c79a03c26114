"""A dataset run's fingerprint: what its outputs depend on, and nothing else.

What the outputs depend on is an explicit allow-list (:data:`OUTPUT_SETTINGS`, :data:`OUTPUT_OPTIONS`
and the model's identity, :func:`model_identity`: file contents, not names): a DIR made with other values
of those is refused (or, with ``force``, started over); the batch size, device, workers, compile and the
Ray options are not among them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.declare import output_names
from ..core.settings import Settings
from ..core.targets import spec_of
from ..models.loaded import RANDOM, LoadedModel
from .dataset import Dataset
from .options import Options

# of Settings. Not the engine: dense, incremental and auto give the same map (to float rounding); fast and
# budget say when it is approximate
OUTPUT_SETTINGS = output_names(Settings)  # patch, stride, fill, seed, precision, fast, budget, all_classes, threshold
OUTPUT_OPTIONS = output_names(Options)  # target, top_k, also_true_class, max_pixels
FINGERPRINT = 2  # how run_settings records them: 2 = resolved values of the allow-list (1: the flags as typed)


def run_settings(dataset: Dataset, model: LoadedModel, settings: Settings, options: Options) -> dict:
    """What the outputs depend on, and nothing else: the dataset, the allow-listed settings and options
    (resolved: the stride, the target's index), and the model (file contents, not names)."""
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
    source = model.source
    if source is None:
        if isinstance(model.module, torch.nn.Module):
            digest = hashlib.sha256()
            for name, tensor in model.module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
            return {"parameters": digest.hexdigest()[:16], "weights": None}
        return {"name": model.name, "weights": None}
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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
