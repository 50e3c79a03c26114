"""Hugging Face folders: an image classifier or semantic segmenter written by ``save_pretrained``, loaded from its
files only (a semantic segmenter, ``AutoModelForSemanticSegmentation``: its per-pixel logits, explained by a
segment target).

A folder with ``config.json`` (and the weights, ``model.safetensors`` or ``pytorch_model.bin``,
possibly sharded) is loaded with ``AutoModelForImageClassification.from_pretrained(folder,
local_files_only=True)`` while the Hugging Face libraries are also told they are offline: nothing
is downloaded, ever. What the folder says becomes occlens's description of the model:

* class names: ``config.id2label``, by index;
* output: ``"sigmoid"`` (independent sigmoids, multi-label) for ``problem_type =
  "multi_label_classification"``, else ``"logits"`` of a softmax;
* preprocessing: ``preprocessor_config.json`` read through the image processor (``AutoImageProcessor``,
  which fills in its class defaults and reads old formats): size, crop, resample, rescale factor,
  mean and std (:func:`preprocess_of`); without one, the config's ``image_size`` and ImageNet's;
* the patch: ``config.patch_size`` when the model's first convolution is a patch embedding of that
  size (kernel = stride = patch: ViT, DeiT, BEiT, Swin, ConvNeXt's stem...), else None.

transformers is imported only here, and only when a folder is loaded (the ``hf`` extra).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import ConfigError, ModelError, first_line
from .preprocess import IMAGENET, Preprocess, fit

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
# the weights save_pretrained writes, whole or in shards with their index
WEIGHTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# PIL's resampling filters by number (what image processors store) to the nearest occlens has
RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
RESAMPLE_NAMES = {"nearest": "nearest", "nearest-exact": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
                  "lanczos": "bicubic", "box": "bilinear", "hamming": "bilinear"}  # fmt: skip


@dataclass(frozen=True)
class Folder:
    """A loaded folder: the module (pixel values in, the logits tensor out) and what the folder says of it."""

    module: torch.nn.Module
    preprocess: Preprocess
    labels: tuple[str, ...] | None  # None: one score (a binary classifier), named 0 and 1 by occlens
    output: str
    patch: int | None


class Logits(torch.nn.Module):
    """A Hugging Face image classifier (or semantic segmenter) as a module that returns its logits, a tensor (N x
    classes; a segmenter's N x classes x h x w, often smaller than the input), not an output object."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out[0]


def model_files(folder: Path) -> list[Path]:
    """The files the folder's model is made of, sorted: ``config.json`` and the weights (for the run
    fingerprint; the preprocessing the folder describes is fingerprinted as resolved)."""
    found = {folder / CONFIG} if (folder / CONFIG).is_file() else set()
    for pattern in WEIGHTS:
        found.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(found)


def load_folder(folder: Path) -> Folder:
    """The image classifier saved in ``folder``, in eval mode, float32, on the CPU. One-line errors: a
    ConfigError for a folder that is not one (or when transformers is not installed), a ModelError for
    weights that would leave part of it random."""
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"no {CONFIG} in {folder}: not a model folder written by save_pretrained")
    transformers = _transformers(folder)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as SEGMENTERS

    where = str(folder.resolve())  # a path, never a repository name on the Hub
    with offline(), quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(where, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{folder / CONFIG}: transformers cannot read it ({first_line(err)})") from None
        kind = getattr(config, "model_type", None) or type(config).__name__
        saved_as = getattr(config, "architectures", None) or ()
        # a semantic segmenter (Segformer, BEiT, DPT, MobileViT...): saved as one, or of a kind only segmenting
        segmenter = kind in SEGMENTERS and (SEGMENTERS[kind] in saved_as or kind not in CLASSIFIERS)
        if kind not in CLASSIFIERS and not segmenter:
            raise ConfigError(
                f"{folder}: config.json describes a {kind!r} model ({type(config).__name__}), which is not an image "
                f"classifier or semantic segmenter; expected a folder saved from an AutoModelForImageClassification "
                f"model (ViT, DeiT, Swin, ConvNeXt, ResNet...) or an AutoModelForSemanticSegmentation one (Segformer)"
            )
        if getattr(config, "problem_type", None) == "regression":
            raise ConfigError(
                f"{folder}: the model is a regressor (problem_type='regression'); occlens explains classifiers"
            )
        try:
            auto = (
                transformers.AutoModelForSemanticSegmentation
                if segmenter
                else transformers.AutoModelForImageClassification
            )
            model, info = auto.from_pretrained(
                where, config=config, local_files_only=True, trust_remote_code=False, output_loading_info=True
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise ConfigError(f"{folder}: cannot load the model's weights ({first_line(err)})") from None
        _check_weights(folder, config, info)
        pre = preprocess_of(folder, config, transformers)
    model = model.float().eval()
    patch = None if segmenter else patch_of(config, model)
    return Folder(Logits(model).eval(), pre, _labels(config), _output(config), patch)


def _transformers(folder: Path):
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"{folder} is a Hugging Face folder; install occlens[hf] (transformers) to load it: "
            f"pip install 'occlens[hf]'"
        ) from None
    return transformers


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face libraries offline for the call (their environment variables, and the flag
    huggingface_hub read from them when it was imported); both put back afterwards."""
    saved = {name: os.environ.get(name) for name in OFFLINE}
    try:  # imported before the variables change, so that what it reads from them stays the caller's
        from huggingface_hub import constants
    except ImportError:
        constants = None
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update(dict.fromkeys(OFFLINE, "1"))
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = flag


@contextlib.contextmanager
def quiet(transformers) -> Iterator[None]:
    """transformers' info lines and its "Loading weights" progress bar off for the call, then as they were."""
    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()


def _check_weights(folder: Path, config, info: Mapping) -> None:
    """Refuse weights that leave part of the model at random (a head that was never saved, a size mismatch)."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    saved_as = ", ".join(getattr(config, "architectures", None) or ()) or "unknown"
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(
            f"{folder}: the weights lack {missing[0]!r}{more}, which would be left random (the folder was saved from "
            f"{saved_as}); save the image classifier itself (its *ForImageClassification model) with save_pretrained"
        )
    if mismatched:
        key, *shapes = mismatched[0]
        sizes = f" ({' vs '.join(str(tuple(s)) for s in shapes)})" if len(shapes) == 2 else ""
        raise ModelError(f"{folder}: the weights of {key!r} do not fit the config{sizes}; num_labels changed?")


def _labels(config) -> tuple[str, ...] | None:
    names = getattr(config, "id2label", None) or {}
    indexed = {int(k): str(v) for k, v in names.items()}
    if len(indexed) < 2 or sorted(indexed) != list(range(len(indexed))):
        return None
    return tuple(indexed[i] for i in range(len(indexed)))


def _output(config) -> str:
    return "sigmoid" if getattr(config, "problem_type", None) == "multi_label_classification" else "logits"


def patch_of(config, model: torch.nn.Module) -> int | None:
    """``config.patch_size`` when the model's first convolution embeds patches of that size (kernel =
    stride = patch, no padding), else None."""
    p = getattr(config, "patch_size", None)
    if isinstance(p, (list, tuple)) and len(p) == 2 and p[0] == p[1]:
        p = p[0]
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        return None
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None or first.kernel_size != (p, p) or first.stride != (p, p) or first.padding != (0, 0):
        return None
    return p


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _resample(value) -> str:
    """An image processor's ``resample`` (PIL's number, an enum, torchvision's mode or a name) as occlens's."""
    value = getattr(value, "value", value)  # PILImageResampling / InterpolationMode
    if isinstance(value, int) and not isinstance(value, bool):
        return RESAMPLE.get(value, "bilinear")
    return RESAMPLE_NAMES.get(str(value).lower(), "bilinear")


def preprocess_of(folder: Path, config, transformers=None) -> Preprocess:
    """``preprocessor_config.json`` as occlens's :class:`Preprocess` (the config's ``image_size`` and ImageNet's
    mean and std without one). occlens resizes keeping the aspect ratio, then centre-crops:

    * ``size={"height", "width"}`` without a crop: a resize straight to that size (``resize=None``);
    * ``size={"shortest_edge": S}`` with ``crop_pct`` (ConvNeXt): below 384, the shorter side to
      ``int(S / crop_pct)`` and a crop of S x S; from 384, straight to S x S, as its processor does;
    * a resize then ``crop_size``: the shorter side to the resize's, then the crop (a processor that
      stretches to a square before cropping gives the same pixels on square photos).

    ``rescale_factor`` and ``do_normalize`` fold into mean and std: the model's input is
    ``(255 * rescale_factor * x - mean) / std`` for occlens's pixels x in [0, 1].
    """
    size = _pair(getattr(config, "image_size", None)) or IMAGENET.size
    if not (folder / PROCESSOR).is_file():
        return fit(IMAGENET, size)
    transformers = transformers or _transformers(folder)
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            str(folder.resolve()), local_files_only=True, trust_remote_code=False
        )
        cfg = processor.to_dict()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        raise ConfigError(f"{folder / PROCESSOR}: transformers cannot read it ({first_line(err)})") from None
    return _from_processor(cfg, size, IMAGENET, folder / PROCESSOR)


def _dims(value) -> dict:
    """A processor's size (a dict, or transformers' SizeDict) without its unset keys."""
    try:
        return {k: v for k, v in dict(value or {}).items() if v is not None}
    except (TypeError, ValueError):
        return {}


def _from_processor(cfg: Mapping, size: tuple[int, int], default: Preprocess, path: Path) -> Preprocess:
    interpolation = _resample(cfg.get("resample", 2))
    dims = _dims(cfg.get("size")) if cfg.get("do_resize", True) else {}
    crop = _dims(cfg.get("crop_size")) if cfg.get("do_center_crop", False) else {}
    crop_size = (crop["height"], crop["width"]) if {"height", "width"} <= set(crop) else None
    resize: int | None = None
    if {"height", "width"} <= set(dims):
        size = (dims["height"], dims["width"])
        if crop_size is not None:
            size, resize = crop_size, max(min(size), max(crop_size))
    elif "shortest_edge" in dims:
        edge = int(dims["shortest_edge"])
        pct = cfg.get("crop_pct")
        if crop_size is not None:
            size, resize = crop_size, max(edge, max(crop_size))
        elif isinstance(pct, (int, float)) and pct > 0:
            size, resize = (edge, edge), (int(edge / pct) if edge < 384 else None)
        else:
            size, resize = (edge, edge), edge
    elif crop_size is not None:
        size, resize = crop_size, max(crop_size)
    scale = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 255.0
    if math.isclose(scale, 1.0, rel_tol=1e-9):
        scale = 1.0
    if cfg.get("do_normalize", True):
        mean, std = cfg.get("image_mean", default.mean), cfg.get("image_std", default.std)
    else:
        mean, std = (0.0,), (1.0,)
    mean = [float(m) / scale for m in (mean if isinstance(mean, (list, tuple)) else [mean])]
    std = [float(s) / scale for s in (std if isinstance(std, (list, tuple)) else [std])]
    try:
        return Preprocess(size=tuple(size), resize=resize, interpolation=interpolation, mean=mean, std=std)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
