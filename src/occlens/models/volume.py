"""Models of volumes: a 3-D classifier (TorchScript file or module) loaded for :func:`occlens.explain` on volumes.

A model is a volume model when it says so: its description's ``input_size`` has three values ``[depth, height,
width]`` (``MODEL.json`` beside the file, or ``description=``), or its first convolution is a ``Conv3d``. It is
checked once on a gray volume (of its ``input_size``, else :data:`PROBE` voxels a side) with its input channels
(the first ``Conv3d``'s, else the description's ``channels``, else 1): the number of scores it returns must fit
its labels. Its input is the [0, 1] volume after the intensity window, as given: no resize and no mean/std (a
volume's normalisation belongs in the model, or in the intensity window).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from ..core.errors import ConfigError, ModelError
from ..core.scoring import model_output, scores_of
from .description import read_description
from .device import pick_device
from .forward import call_model
from .loaded import LoadedModel, ModelSource
from .preprocess import Preprocess
from .recognise import labels_for
from .runner import prepared
from .torch_files import load_torchscript

PROBE = 32  # voxels a side of the gray probe volume when the description gives no input size
VOLUME_KEYS = ("input_size", "channels", "output", "labels")
VOLUME_MODEL = "a volume model"  # a volume model's LoadedModel.preprocess_from: its preprocessing is never applied


def volume_description(spec, description) -> dict[str, Any] | None:
    """The description of ``spec`` (the file beside it, then ``description``) when it declares a volume input (an
    ``input_size`` of three values), else None."""
    found: dict[str, Any] = {}
    if isinstance(spec, (str, Path)) and Path(spec).is_file():
        for suffix in (".json", ".toml"):
            beside = Path(spec).with_suffix(suffix)
            if beside.is_file() and beside != Path(spec):
                found |= read_description(beside)
                break
    if isinstance(description, Mapping):
        found |= dict(description)
    elif description is not None:
        found |= read_description(description)
    size = found.get("input_size")
    return found if isinstance(size, (list, tuple)) and len(size) == 3 else None


def first_conv(module) -> tuple[str, int] | None:
    """``("Conv3d", in_channels)`` or ``("Conv2d", ...)`` of the module's first convolution (TorchScript too)."""
    if not isinstance(module, torch.nn.Module):
        return None
    for m in module.modules():
        kind = type(m).__name__ if not isinstance(m, torch.jit.ScriptModule) else getattr(m, "original_name", "")
        if kind in ("Conv2d", "Conv3d"):
            channels = getattr(m, "in_channels", None)  # a scripted convolution may keep only its weight
            if channels is None:
                weight = cast(torch.Tensor, m.weight)  # a convolution's (Module.__getattr__ says Tensor | Module)
                channels = weight.shape[1] * int(getattr(m, "groups", 1))
            return kind, int(channels)
    return None


def is_volume_model(module) -> bool:
    found = first_conv(module)
    return found is not None and found[0] == "Conv3d"


def load_volume_model(
    spec: str | Path | torch.nn.Module,
    description: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    device=None,
) -> LoadedModel:
    """A volume model (this module's doc) from a TorchScript file or a module, with ``description`` (keys
    :data:`VOLUME_KEYS`) already read, on ``device``."""
    desc = dict(description or {})
    unknown = sorted(set(desc) - set(VOLUME_KEYS) - {"mean", "std", "resize", "interpolation", "channel_order"})
    if unknown:
        raise ConfigError(f"a volume model's description knows {', '.join(VOLUME_KEYS)}; unknown: {', '.join(unknown)}")
    if isinstance(spec, torch.nn.Module):
        module, name, source = spec, type(spec).__name__, None
    else:
        path = Path(spec)
        module, name = load_torchscript(path, trust_pickle).eval(), str(spec)
        source = ModelSource(str(spec), None, description, trust_pickle, None)
        module = module.to(pick_device(device))
    size = tuple(int(v) for v in desc.get("input_size") or (PROBE,) * 3)
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"a volume model's input_size is [depth, height, width], positive ints, got {size}")
    conv = first_conv(module)
    channels = int(desc.get("channels") or (conv[1] if conv else 1))
    with prepared(module, quiet=True) as runner:
        probe = torch.full((1, channels, *size), 0.5, device=runner.device, dtype=runner.dtype)
        raw = call_model(runner.forward, probe, f"a gray {'x'.join(map(str, size))} test volume")
    out = model_output(raw, 1)
    try:  # a segmenter's N x classes x d x h x w: its classes per voxel
        count = int(out.shape[1] if isinstance(out, torch.Tensor) and out.ndim == 5 else scores_of(out, 1).shape[1])
    except ModelError:
        count = 1  # a model that returns no class scores (a function target reads its output)
    labels = labels_for(count, None if desc.get("labels") is None else tuple(desc["labels"]), None)
    pre = Preprocess(size[1:], None, "nearest", (0.0,) * channels, (1.0,) * channels)  # recorded; never applied
    return LoadedModel(name, module, pre, labels, desc.get("output", "logits"), source, None, VOLUME_MODEL)
