"""Fill strategies: what replaces the pixels under a window, in [0, 1] image space.

Every fill is one C x H x W *baseline* image of the same size as the input; an
occluded copy takes the baseline's pixels inside the window and the image's
outside. That is also Captum's ``baselines`` argument, which keeps the oracle test
one line long.

A volume (C x D x H x W, in [0, 1] after its intensity window) has the same fills with the same meaning:
gray is 0.5 (the window's middle), mean is per channel over all voxels, blur is the same Gaussian along
each of the three axes (in voxels), noise is uniform and seeded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import NAMED_FILLS, Fill, check_fill  # noqa: F401 (check_fill: its old home)
from .errors import ConfigError

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def _separable_blur(x: torch.Tensor, dims: int, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x C x (``dims`` spatial axes) tensor, edges replicated: one depthwise
    convolution per axis, the last axis first."""
    half = kernel // 2
    taps = torch.arange(kernel, dtype=torch.float64) - half
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    conv = F.conv2d if dims == 2 else F.conv3d
    x = F.pad(x, (half, half) * dims, mode="replicate")
    for axis in reversed(range(dims)):
        shape = [1] * dims
        shape[axis] = kernel
        x = conv(x, weights.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def gaussian_blur(image: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of a C x H x W (or N x C x H x W) tensor, edges replicated."""
    x = image if image.ndim == 4 else image[None]
    x = _separable_blur(x, 2, kernel, sigma)
    return x if image.ndim == 4 else x[0]


def gaussian_blur3d(volume: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of a C x D x H x W (or N x C x D x H x W) volume along its three axes, the same
    kernel as :func:`gaussian_blur` (in voxels), edges replicated."""
    x = volume if volume.ndim == 5 else volume[None]
    x = _separable_blur(x, 3, kernel, sigma)
    return x if volume.ndim == 5 else x[0]


def baseline(image: torch.Tensor, fill: Fill, seed: int = 0) -> torch.Tensor:
    """The C x H x W image whose pixels fill every window, for an image in [0, 1]; for a C x D x H x W volume
    (four axes), the C x D x H x W volume whose voxels fill every window, with the same meaning."""
    if image.ndim not in (3, 4):
        raise ValueError(f"expected a C x H x W image or a C x D x H x W volume, got shape {tuple(image.shape)}")
    c, spatial = image.shape[0], tuple(range(1, image.ndim))
    if fill == "gray":
        return torch.full_like(image, 0.5)
    if fill == "black":
        return torch.zeros_like(image)
    if fill == "mean":
        return image.mean(dim=spatial, keepdim=True).expand_as(image).clone()
    if fill == "blur":
        return gaussian_blur(image) if image.ndim == 3 else gaussian_blur3d(image)
    if fill == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(image.shape, generator=generator, dtype=torch.float32).to(image)
    if isinstance(fill, tuple):
        if len(fill) != c:
            raise ConfigError(
                f"fill {fill!r} has {len(fill)} values but the image has {c} channels; give one value per channel"
            )
        values = torch.tensor(fill, dtype=image.dtype, device=image.device)
        return values.view(c, *[1] * len(spatial)).expand_as(image).clone()
    return torch.full_like(image, float(fill))
