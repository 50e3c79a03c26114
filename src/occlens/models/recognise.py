"""What preprocessing a model gets: how a photo becomes its input (resize, centre crop, mean and std) and the
class names that may come with it. One rule for ``explain``, ``run``, ``evaluate`` and ``load_model``:

* ``preprocess=`` given: a preset (``"imagenet"``: resize 256, crop 224, ImageNet's mean and std; ``"none"``:
  the image as given), a torchvision weights enum or its name (its ``transforms()`` and its
  ``meta["categories"]``), an :class:`~occlens.models.Preprocess` or a mapping of its fields (:func:`resolve`);
* otherwise what the module says of itself: a timm module's ``pretrained_cfg`` (:func:`own`), at the module's
  own input size where that is fixed (a ViT built with another ``img_size``);
* a plain module that says nothing (a torchvision module), given a photo: the photo at its own size, not
  normalised, as documented, and one warning that says so and how to say otherwise (:func:`for_images`).

Class names come with a choice only for a model with as many outputs as they name (:func:`labels_for`): a
fine-tuned head (10 classes) gets its indices, never ImageNet's names or sizes by guess.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..core.checks import check_preprocess
from ..core.errors import ConfigError, option, warn
from ..core.scoring import model_output, scores_of
from .description import Description, with_description
from .forward import call_model
from .imagenet import imagenet_labels
from .loaded import LoadedModel
from .preprocess import _INTERPOLATIONS, CROP_PCT, IMAGENET, Normalized, Preprocess, fit
from .runner import prepared

TIMM = "timm pretrained_cfg"  # where a timm module's preprocessing comes from, as results record it


@dataclass(frozen=True)
class Choice:
    """A model's preprocessing: ``preprocess`` (None: the image as given, at its own size, not normalised), the
    class names it brings (used only for a model with as many outputs) and where it comes from (``source``)."""

    preprocess: Preprocess | None
    labels: tuple[str, ...] | None
    source: str

    def record(self) -> dict:
        return record(self.preprocess, self.source)


def record(pre: Preprocess | None, source: str | None) -> dict:
    """What was applied, as ``result.meta["preprocess"]`` and the JSON hold it."""
    if pre is None:
        return {"from": source}
    values = dataclasses.asdict(pre)
    return {"from": source, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}


def resolve(spec, name: str = "preprocess") -> Choice | None:
    """The preprocessing ``spec`` names (see the module docstring); None for None (the model's own)."""
    spec = check_preprocess(spec, name)
    if spec is None:
        return None
    if spec == "none":
        return Choice(None, None, "none")
    if spec == "imagenet":
        return Choice(IMAGENET, imagenet_labels(), "imagenet")
    if isinstance(spec, str):
        return _weights(spec, name)
    try:
        pre = Preprocess(**{**spec, "size": tuple(spec["size"]) if isinstance(spec["size"], list) else spec["size"]})
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{option(name)}: {err}", option=name, value=spec) from None
    return Choice(pre, None, "Preprocess")


def for_loaded(spec, name: str = "preprocess") -> Choice | None:
    """:func:`resolve` for a :class:`LoadedModel`, which prepares every image to its input size: ``"none"`` is
    refused, in one line that says where it applies."""
    choice = resolve(spec, name)
    if choice is not None and choice.preprocess is None:
        raise ConfigError(
            f"{option(name)}='none' keeps images as they are, which a LoadedModel never does (it prepares every "
            f"image to its input size); give the module itself to occlens.explain with {option(name)}='none', or "
            f"leave {option(name)} out",
            option=name, value="none",
        )  # fmt: skip
    return choice


def _weights(text: str, name: str) -> Choice:
    import torchvision

    try:
        weights = torchvision.models.get_weight(text)
    except (KeyError, ValueError, AttributeError):
        close = difflib.get_close_matches(text, _weights_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (torchvision.models.get_weight's names)"
        expected = "a torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V2"
        raise ConfigError(f"{option(name)}: unknown torchvision weights {text!r}{hint}", option=name, value=text,
                          expected=expected) from None  # fmt: skip
    categories = weights.meta.get("categories")
    spelt = f"{type(weights).__name__}.{weights.name}"
    return Choice(transforms_preprocess(weights.transforms(), spelt), tuple(categories) if categories else None, spelt)


def _weights_names() -> list[str]:
    import torchvision

    names = []
    for model in torchvision.models.list_models(module=torchvision.models):
        try:
            enum = torchvision.models.get_model_weights(model)
        except (ValueError, KeyError):
            continue
        names += [f"{enum.__name__}.{member}" for member in enum.__members__]
    return names


def transforms_preprocess(transforms, what: str) -> Preprocess:
    """torchvision's ``ImageClassification`` transforms (a weights enum's ``transforms()``) as a Preprocess."""
    crop, resize = getattr(transforms, "crop_size", None), getattr(transforms, "resize_size", None)
    if not crop:
        raise ConfigError(
            f"{what} are not an image classifier's weights (their transforms are {type(transforms).__name__}); "
            f"give the weights of a classification model"
        )
    return Preprocess(size=(crop[0], crop[-1]), resize=resize[0] if resize else None,
                      interpolation=transforms.interpolation.value, mean=tuple(transforms.mean),
                      std=tuple(transforms.std))  # fmt: skip


def timm_preprocess(cfg: Mapping, size: tuple[int, int] | None = None) -> Preprocess:
    """timm's eval preprocessing from a ``pretrained_cfg`` (as ``timm.data.create_transform`` makes it: the
    shorter side resized to ``size / crop_pct``, a centre crop of ``size``), at ``size`` (default: the cfg's)."""
    _, h, w = cfg["input_size"]
    interpolation = cfg.get("interpolation") or "bilinear"
    pre = Preprocess(size=(h, w), resize=None,
                     interpolation=interpolation if interpolation in _INTERPOLATIONS else "bilinear",
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))  # fmt: skip
    return fit(pre, size or (h, w), cfg.get("crop_pct") or CROP_PCT)


def own(model) -> Choice | None:
    """What a module says of its own preprocessing: a timm module's ``pretrained_cfg`` (at the module's own input
    size where that is fixed and differs: a ViT built with another ``img_size``), ImageNet's names if the cfg is
    ImageNet's 1000 classes; None for a module that says nothing (a torchvision module, a callable)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or not {"input_size", "mean", "std"} <= set(cfg):
        return None
    size = None
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if cfg.get("fixed_input_size") and isinstance(fixed, (tuple, list)) and len(fixed) == 2:
        size = (int(fixed[0]), int(fixed[1]))
    labels = imagenet_labels() if cfg.get("num_classes") == 1000 else None
    return Choice(timm_preprocess(cfg, size), labels, TIMM)


def labels_for(outputs: int, given: tuple[str, ...] | None, brought: tuple[str, ...] | None) -> tuple[str, ...]:
    """A model's class names: ``given`` (a description's), which must name one class per output; else those
    its preprocessing ``brought`` (a weights enum's, ImageNet's) if they are as many as its classes; else
    ImageNet's for 1000 classes; else the indices. ``outputs``: how many scores it returns (one: binary; None: a
    detector, which does not say how many classes it has: the names given or brought, else none)."""
    if outputs is None:
        return given or brought or ()
    count = max(2, outputs)  # one score: a binary classifier, classes 0 and 1
    if given is not None:
        if len(given) != count:
            scores = "1 score (a binary classifier: 2 classes, 0 and 1)" if outputs == 1 else f"{outputs} scores"
            raise ConfigError(
                f"the labels name {len(given)} classes but the model returns {scores}; give one name per "
                f"class, in the order of the model's outputs"
            )
        return given
    if brought is not None and len(brought) == count:
        return brought
    return imagenet_labels() if count == 1000 else tuple(str(i) for i in range(count))


def score_count(module, pre: Preprocess) -> int | None:
    """How many scores the model returns, from one forward pass on a gray image of its input size (in eval
    mode, a module's modes restored after)."""
    with prepared(module, quiet=True) as runner:
        probe = torch.full((1, 3, *pre.size), 0.5, device=runner.device, dtype=runner.dtype)
        raw = call_model(runner.forward, probe, f"a gray {pre.size[0]}x{pre.size[1]} test image")
    out = model_output(raw, 1)
    if isinstance(out, torch.Tensor) and out.ndim == 4:  # a segmenter: its classes per pixel
        return int(out.shape[1])
    if isinstance(out, torch.Tensor) and out.ndim == 3 and out.shape[2] >= 6:  # detections: 4 + 1 + classes
        return int(out.shape[2]) - 5
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):  # a detector: its classes unsaid
        return None
    return int(scores_of(raw, 1).shape[1])


def home(model) -> torch.device:
    """Where a module's tensors are (the CPU for a callable, or a module without any)."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def wrap(model, choice: Choice, description=None, name: str | None = None) -> LoadedModel:
    """A module (or callable) of the caller's as a :class:`LoadedModel` with ``choice``'s preprocessing, and
    ``description`` (a mapping or a file: :func:`~occlens.models.description.with_description`) on top. The
    module is wrapped, not changed: not moved, cast or switched to eval mode (explaining runs it in eval mode
    and restores its modes); ``choice`` prepares images (not ``"none"``: :func:`for_loaded`)."""
    desc = with_description(Description(choice.preprocess), None, description)
    if desc.num_classes is not None:
        raise ConfigError("num_classes applies to torchvision:NAME and timm:NAME architectures; a module has its own "
                          "classifier head: leave num_classes out")  # fmt: skip
    pre = desc.preprocess
    source = choice.source if pre == choice.preprocess else f"{choice.source}, changed by the description"
    module = Normalized(model, pre.mean, pre.std, pre.channel_order, device=home(model))
    labels = labels_for(score_count(module, pre), desc.labels, choice.labels)
    return LoadedModel(name or type(model).__name__, module, pre, labels, desc.output, None, None, source)


def with_preprocess(model: LoadedModel, spec, name: str = "preprocess") -> LoadedModel:
    """``model`` preparing images as ``spec`` says (resize, crop, mean, std; its class names kept), or ``model``
    itself when ``spec`` is None or is what it has already."""
    choice = for_loaded(spec, name)
    if choice is None:
        return model
    pre = choice.preprocess
    if pre == model.preprocess:  # what it has: its module as it is
        return model if model.preprocess_from == choice.source else replace(model, preprocess_from=choice.source)
    inner = model.module
    if not isinstance(inner, Normalized):
        raise ConfigError(
            f"{option(name)} replaces a model's resize, crop and normalisation, but {model.name}'s module "
            f"normalises in its own way (it is no occlens.models.Normalized); build the LoadedModel with the "
            f"preprocessing you want, e.g. occlens.load_model(module, preprocess=...)",
            option=name, value=spec,
        )  # fmt: skip
    module = Normalized(inner.model, pre.mean, pre.std, pre.channel_order, device=inner.mean.device)
    source = None if model.source is None else replace(model.source, preprocess=check_preprocess(spec, name))
    return replace(model, module=module, preprocess=pre, source=source, preprocess_from=choice.source)


def for_images(model, spec, images: list):
    """``(model, record)``: the model one :func:`occlens.explain` call runs on ``images``, and what a model left
    plain applied (``result.meta["preprocess"]``; None: nothing to record).

    A :class:`LoadedModel` with ``spec`` given prepares images as ``spec`` says (:func:`with_preprocess`); a plain
    module (or callable) with ``spec`` given, or, given a path or PIL image, one that says its own preprocessing
    (:func:`own`), becomes a LoadedModel for the call; one that says nothing is left as it is, its photos
    explained at their own size, with a warning (unless ``spec`` is ``"none"``, which says so on purpose).
    Arrays and tensors are taken as they are, as before, unless ``spec`` is given."""
    if isinstance(model, LoadedModel):
        return with_preprocess(model, spec), None
    choice = resolve(spec)
    photos = any(isinstance(image, (str, os.PathLike, Image.Image)) for image in images)
    if choice is None and photos:
        choice = own(model)
        if choice is None:
            what = f"the {type(model).__name__} module" if isinstance(model, torch.nn.Module) else "the model"
            warn(
                f"{what} has no preprocessing of its own, so image files and PIL images are explained at their own "
                f"size, not normalised; pass preprocess='imagenet' (resize 256, crop 224, ImageNet mean/std), a "
                f"torchvision weights enum (e.g. ResNet50_Weights.DEFAULT) or an occlens.models.Preprocess to "
                f"prepare them as the model was trained, or preprocess='none' to keep them so"
            )
            return model, record(None, "none")
    if choice is None:
        return model, None
    if choice.preprocess is None:
        return model, choice.record()
    return wrap(model, choice), None
