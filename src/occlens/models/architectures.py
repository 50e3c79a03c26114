"""``torchvision:NAME`` and ``timm:NAME``: an architecture built with random weights (nothing is downloaded),
and the preprocessing its library describes for it."""

from __future__ import annotations

import difflib

import torch

from ..core.errors import ConfigError, first_line
from .description import Description
from .preprocess import Preprocess
from .recognise import TIMM, timm_preprocess, transforms_preprocess


def architecture_description(kind: str, name: str) -> tuple[Description, str]:
    """Preprocessing from torchvision's weights metadata or timm's pretrained_cfg for ``name``, and where it
    comes from (as results record it)."""
    if kind == "torchvision":
        import torchvision

        check_name(name, torchvision_names(), kind)
        if name in segmenters():
            return _segmenter_description(name)
        if name in detectors():
            return _detector_description(name)
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return Description(), "ImageNet defaults"
        spelt = f"{type(weights).__name__}.{weights.name}"
        return Description(transforms_preprocess(weights.transforms(), spelt)), f"torchvision weights {spelt}"
    import timm

    check_name(name, timm.list_models(), kind)
    return Description(timm_preprocess(timm.create_model(name, pretrained=False).pretrained_cfg)), TIMM


def torchvision_names() -> list[str]:
    """torchvision's classification and semantic segmentation architectures."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models) + segmenters() + detectors()


def segmenters() -> list[str]:
    """torchvision's semantic segmentation architectures (FCN, DeepLabV3, LRASPP): ``{"out": N x classes x h x w}``."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.segmentation)


def _segmenter_description(name: str) -> tuple[Description, str]:
    """A torchvision segmenter's preprocessing (its weights' ``resize_size``, the shorter side, then a centre crop
    of that square: occlens explains one fixed input size) and class names (its weights' categories, VOC's)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    t, spelt = weights.transforms(), f"{type(weights).__name__}.{weights.name}"
    side = int(t.resize_size[0])
    pre = Preprocess(size=(side, side), resize=side, interpolation=t.interpolation.value, mean=tuple(t.mean),
                     std=tuple(t.std))  # fmt: skip
    labels = tuple(weights.meta["categories"])
    return Description(pre, "logits", labels), f"torchvision weights {spelt} (a centre crop of {side} x {side})"


def detectors() -> list[str]:
    """torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite; Mask and Keypoint R-CNN's boxes): a
    list of ``{"boxes", "labels", "scores"}`` per image."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.detection)


DETECTOR_SCORE_FLOOR = 0.001  # the score below which a detector occlens builds drops a detection (box targets)


def detector_side(name: str) -> int:
    """The input side a torchvision detector's weights were trained at: SSD's fixed 300 or 320, else the
    shorter side its transform resizes to (800; 320 for the ``_320`` variant)."""
    return 300 if name.startswith("ssd300") else 320 if "320" in name else 800


def _detector_description(name: str) -> tuple[Description, str]:
    """A torchvision detector's preprocessing: a square of its training side (resize the shorter side, centre
    crop), no mean or std (a detector normalises inside, in its own transform), COCO's class names."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    side, spelt = detector_side(name), f"{type(weights).__name__}.{weights.name}"
    pre = Preprocess(size=(side, side), resize=side, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                     std=(1.0, 1.0, 1.0))  # fmt: skip
    labels = tuple(weights.meta["categories"])
    origin = f"torchvision weights {spelt} (a centre crop of {side} x {side}; the detector normalises inside)"
    return Description(pre, "detections", labels), origin


def _detector_options(name: str, size: tuple[int, int] | None) -> dict:
    """What occlens builds a torchvision detector with: scores kept down to :data:`DETECTOR_SCORE_FLOOR` (a box
    target needs the low ones), and (not SSD, which resizes to its own fixed size) the transform's resize set to
    the input size, so that it leaves the input as it is and boxes come back in the input's pixels unscaled."""
    options = {"score_thresh": DETECTOR_SCORE_FLOOR}
    if "rcnn" in name:
        options = {"box_score_thresh": DETECTOR_SCORE_FLOOR}
    if not name.startswith("ssd") and size is not None:
        options.update(min_size=min(size), max_size=max(size))
    return options


def check_name(name: str, known: list[str], kind: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {kind} architecture {name!r}{hint}")


def build_architecture(
    kind: str, name: str, num_classes: int | None, size: tuple[int, int] | None = None
) -> torch.nn.Module:
    """The architecture with random weights (nothing is downloaded), the same ones every time (seed 0); ``size``:
    the input's height and width (a detector's transform is set to keep it)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's random state is left alone
        torch.manual_seed(0)
        try:
            if kind == "torchvision":
                import torchvision

                if name in detectors():  # nothing downloaded; low scores kept; the input's size kept
                    options = _detector_options(name, size)
                    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **options, **extra)
                if name in segmenters():  # nothing downloaded: no backbone weights either
                    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **extra)
                return torchvision.models.get_model(name, weights=None, **extra)
            import timm

            return timm.create_model(name, pretrained=False, **extra)
        except (RuntimeError, ValueError, TypeError, MemoryError) as err:
            raise ConfigError(f"cannot build {kind}:{name} with {extra or 'its defaults'}: {first_line(err)}") from None
