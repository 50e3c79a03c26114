"""Preprocess does on PIL images what torchvision's Resize + CenterCrop + ToTensor do, pixel for pixel, without
importing torchvision (a run's worker processes start without it): checked against torchvision itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from occlens.models.preprocess import Preprocess

MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}  # fmt: skip


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2] //= 3  # some structure: resampling differences show at edges
    return Image.fromarray(pixels, "RGB").convert(mode)


def torchvisions(image: Image.Image, size: tuple[int, int], resize: int | None, interpolation: str) -> torch.Tensor:
    steps = [T.Resize(list(size) if resize is None else [resize], interpolation=MODES[interpolation])]
    if resize is not None:
        steps.append(T.CenterCrop(list(size)))
    out = T.Compose(steps)(image.convert("RGB"))
    return T.functional.pil_to_tensor(out).to(torch.float32).div_(255.0)


@pytest.mark.parametrize("interpolation", sorted(MODES))
@pytest.mark.parametrize(
    ("width", "height", "size", "resize"),
    [
        (300, 451, (224, 224), 256),  # portrait, the ImageNet preset
        (451, 300, (224, 224), 256),  # landscape
        (97, 61, (32, 48), 50),  # small, a rectangular crop, odd sizes (the centre's rounding)
        (61, 97, (48, 32), 49),
        (256, 256, (224, 224), 256),  # the resize a no-op: only the crop
        (224, 224, (224, 224), 224),  # nothing to do
        (64, 64, (32, 32), None),  # straight to the size
        (33, 70, (35, 20), None),  # up in one side, down in the other
    ],
)
def test_preprocess_is_torchvisions_resize_and_crop(width, height, size, resize, interpolation):
    image = photo(width, height)
    pre = Preprocess(size=size, resize=resize, interpolation=interpolation, mean=(0.5,), std=(0.5,))
    ours = pre(image)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (3, *size)
    assert torch.equal(ours, torchvisions(image, size, resize, interpolation))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_are_made_rgb_as_before(mode):
    image = photo(80, 60, mode)
    pre = Preprocess(size=(32, 32), resize=40, interpolation="bilinear", mean=(0.5,), std=(0.5,))
    from occlens.core.image import to_rgb

    assert torch.equal(pre(image), torchvisions(to_rgb(image), (32, 32), 40, "bilinear"))


def test_preprocessing_imports_no_torchvision():
    code = ("import sys; from PIL import Image; from occlens.models.preprocess import IMAGENET; "
            "IMAGENET(Image.new('RGB', (300, 200))); print('torchvision' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
