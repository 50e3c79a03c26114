"""``torchvision:NAME`` and ``timm:NAME``: an architecture built with random weights (nothing is downloaded),
and the preprocessing its library describes for it."""

from __future__ import annotations

import difflib

import torch

from ..core.errors import ConfigError, first_line
from .description import Description
from .preprocess import CROP_PCT, Preprocess, fit


def architecture_description(kind: str, name: str) -> Description:
    """Preprocessing from torchvision's weights metadata or timm's pretrained_cfg for ``name``."""
    if kind == "torchvision":
        import torchvision

        check_name(name, torchvision.models.list_models(module=torchvision.models), kind)
        try:
            t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        except (ValueError, KeyError, AttributeError):
            return Description()
        resize = t.resize_size[0] if t.resize_size else None
        pre = Preprocess(size=(t.crop_size[0], t.crop_size[0]), resize=resize, interpolation=t.interpolation.value,
                         mean=tuple(t.mean), std=tuple(t.std))  # fmt: skip
        return Description(pre)
    import timm
    import timm.data

    check_name(name, timm.list_models(), kind)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    _, h, w = cfg["input_size"]
    interpolation = cfg.get("interpolation", "bilinear")
    pre = Preprocess(size=(h, w), resize=None,
                     interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))  # fmt: skip
    return Description(fit(pre, (h, w), cfg.get("crop_pct", CROP_PCT)))


def check_name(name: str, known: list[str], kind: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {kind} architecture {name!r}{hint}")


def build_architecture(kind: str, name: str, num_classes: int | None) -> torch.nn.Module:
    """The architecture with random weights (nothing is downloaded), the same ones every time (seed 0)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's random state is left alone
        torch.manual_seed(0)
        try:
            if kind == "torchvision":
                import torchvision

                return torchvision.models.get_model(name, weights=None, **extra)
            import timm

            return timm.create_model(name, pretrained=False, **extra)
        except (RuntimeError, ValueError, TypeError, MemoryError) as err:
            raise ConfigError(f"cannot build {kind}:{name} with {extra or 'its defaults'}: {first_line(err)}") from None
