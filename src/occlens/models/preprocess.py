"""Model input preparation: resize and centre-crop a photo to [0, 1] pixels; normalise inside the model.

Occlusion happens in [0, 1] image space, so :class:`Preprocess` stops before
normalisation and :class:`Normalized` applies ``(x - mean) / std`` as the model's
first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..core.errors import ConfigError, ImageError
from ..core.image import to_rgb

_INTERPOLATIONS = {  # name: PIL's filter (the one torchvision's InterpolationMode of that name uses on PIL images)
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


CHANNEL_ORDERS = ("RGB", "BGR")
# A photo whose resized copy would have more pixels than this (a long panorama, a strip) is resampled
# only where the crop lies (Preprocess._resized_crop): the same pixels without a copy of gigabytes.
MAX_RESIZED_PIXELS = 40_000_000


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _floats(name: str, values) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be 1 or 3 numbers (one per RGB channel), got {values!r}") from None
    if len(out) not in (1, 3) or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be 1 or 3 finite numbers (one per RGB channel), got {values!r}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """A PIL photo to the model's float32 3 x H x W input in [0, 1]: resize the shorter side, centre-crop.

    This is torchvision's ``Resize(resize) + CenterCrop(size) + ToTensor`` on PIL images
    (what timm's eval transform does), without the ``Normalize``: that lives in
    :class:`Normalized`, which uses ``mean`` and ``std`` from here. It is done as torchvision does it on PIL
    images (PIL's resize, its sizes and rounding), without importing torchvision: a dataset run's worker
    processes, which decode images, start seconds sooner.
    """

    size: tuple[int, int]  # crop (height, width)
    resize: int | None  # shorter side before the crop; None resizes straight to `size`
    interpolation: str  # "bilinear", "bicubic" or "nearest"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"  # "BGR" models get their channels swapped (inside Normalized, after occlusion)

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,)
        if len(size) != 2 or not all(_positive_int(s) for s in size):
            raise ConfigError(f"size must be (height, width), two positive ints, got {self.size!r}")
        if self.resize is not None and (not _positive_int(self.resize) or self.resize < max(size)):
            raise ConfigError(
                f"resize must be None or an int >= the larger crop side {max(size)}, got {self.resize!r}; "
                f"a smaller shorter side would pad the crop"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}")
        mean, std = _floats("mean", self.mean), _floats("std", self.std)
        if len(mean) != len(std):
            raise ConfigError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB float32 3 x H x W tensor in [0, 1], H x W = ``size``."""
        if not isinstance(image, Image.Image):
            raise ImageError(f"Preprocess takes a PIL image, got {type(image).__name__}; open files with PIL first")
        image = to_rgb(image)
        width, height = image.size
        ch, cw = self.size
        if self.resize is None:
            image = _resized(image, cw, ch, _INTERPOLATIONS[self.interpolation])
        elif self.resize * self.resize * max(width, height) / min(width, height) > MAX_RESIZED_PIXELS:
            image = self._resized_crop(image)
        else:
            rw, rh = self._resized_size(self.resize, width, height)
            image = _resized(image, rw, rh, _INTERPOLATIONS[self.interpolation])
            left, top = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))  # torchvision's center_crop
            if (cw, ch) != (rw, rh):
                image = image.crop((left, top, left + cw, top + ch))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # H x W x C
        return pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)

    @staticmethod
    def _resized_size(resize: int, width: int, height: int) -> tuple[int, int]:
        """The photo's size once its shorter side is resized to ``resize``, with torchvision's rounding."""
        short, long = sorted((width, height))
        new_long = int(resize * long / short)
        return (resize, new_long) if width <= height else (new_long, resize)

    def _resized_crop(self, image: Image.Image) -> Image.Image:
        """The crop of the resized photo, resampling only the crop's box of the photo.

        PIL resamples a box with the same output pixel centres and filter support (read beyond the
        box) as the whole photo; two passes, horizontal first as PIL's own resize, keep its rounding
        too. The same pixels up to one level of 255 (bilinear, bicubic); nearest may take a row or
        column from its neighbour where a pixel centre falls on a boundary.
        """
        width, height = image.size
        left, top, right, bottom = self.crop_box(width, height)
        (ch, cw), resample = self.size, _INTERPOLATIONS[self.interpolation]
        image = image.resize((cw, height), resample, box=(left, 0, right, height))
        return image.resize((cw, ch), resample, box=(0, top, cw, bottom))

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a ``width`` x ``height`` photo that the model sees: ``(left, top, right, bottom)``."""
        ch, cw = self.size
        if self.resize is None:
            return (0.0, 0.0, float(width), float(height))
        rw, rh = self._resized_size(self.resize, width, height)
        left, top = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))
        sx, sy = width / rw, height / rh
        return (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)


# occlens's preprocessing for a model that says nothing of its own: ImageNet's mean and std, 224 x 224
IMAGENET = Preprocess(size=(224, 224), resize=256, interpolation="bilinear",
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # fmt: skip
CROP_PCT = 0.875  # the crop's share of the resized shorter side, the usual one (224 of 256)


def _resized(image: Image.Image, width: int, height: int, resample) -> Image.Image:
    """``image`` at ``width`` x ``height`` (itself where it has that size already, as torchvision's resize)."""
    return image if image.size == (width, height) else image.resize((width, height), resample=resample)


def fit(pre: Preprocess, size: tuple[int, int], crop_pct: float = CROP_PCT) -> Preprocess:
    """``pre`` for a fixed input ``size``: the shorter side resized to ``size / crop_pct``, then a crop of ``size``."""
    return replace(pre, size=size, resize=max(max(size), math.floor(min(size) / crop_pct)))


class Normalized(torch.nn.Module):
    """``model((x - mean) / std)``: a model that takes [0, 1] RGB pixels. The wrapped model is not changed.

    ``model`` may be any callable (an ONNX session adapter, say), not only a module.
    With ``channel_order="BGR"`` the channels are reversed first; ``mean`` and ``std``
    are in the model's own channel order. ``device``: where ``mean`` and ``std`` are made (the wrapped
    model's, so that a module of the caller's is wrapped without being moved).
    """

    def __init__(
        self, model, mean: tuple[float, ...], std: tuple[float, ...], channel_order: str = "RGB", device=None
    ) -> None:
        super().__init__()
        mean, std = _floats("mean", mean), _floats("std", std)
        if len(mean) != len(std) or min(std) <= 0:
            raise ConfigError(f"mean and std must have the same length and std be positive, got {mean} and {std}")
        if channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be RGB or BGR, got {channel_order!r}")
        self.model = model
        self.training = False  # no mode of its own: the wrapped model keeps its own modes (they are not changed)
        self.bgr = channel_order == "BGR"
        as_buffer = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("mean", as_buffer(mean), persistent=False)
        self.register_buffer("std", as_buffer(std), persistent=False)

    def forward(self, x: torch.Tensor):
        if self.bgr:
            x = x.flip(1)
        return self.model((x - self.mean) / self.std)
