"""Fill strategies: what replaces the pixels under a window, in [0, 1] image space.

Every fill is one C x H x W *baseline* image of the same size as the input; an
occluded copy takes the baseline's pixels inside the window and the image's
outside. That is also Captum's ``baselines`` argument, which keeps the oracle test
one line long.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import NAMED_FILLS, Fill, check_fill  # noqa: F401 (check_fill: its old home)
from .errors import ConfigError

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def gaussian_blur(image: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of a C x H x W (or N x C x H x W) tensor, edges replicated."""
    x = image if image.ndim == 4 else image[None]
    half = kernel // 2
    taps = torch.arange(kernel, dtype=torch.float64) - half
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    x = F.pad(x, (half, half, half, half), mode="replicate")
    x = F.conv2d(x, weights.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    x = F.conv2d(x, weights.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)
    return x if image.ndim == 4 else x[0]


def baseline(image: torch.Tensor, fill: Fill, seed: int = 0) -> torch.Tensor:
    """The C x H x W image whose pixels fill every window, for an image in [0, 1]."""
    c = image.shape[0]
    if fill == "gray":
        return torch.full_like(image, 0.5)
    if fill == "black":
        return torch.zeros_like(image)
    if fill == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    if fill == "blur":
        return gaussian_blur(image)
    if fill == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(image.shape, generator=generator, dtype=torch.float32).to(image)
    if isinstance(fill, tuple):
        if len(fill) != c:
            raise ConfigError(
                f"fill {fill!r} has {len(fill)} values but the image has {c} channels; give one value per channel"
            )
        return torch.tensor(fill, dtype=image.dtype, device=image.device).view(c, 1, 1).expand_as(image).clone()
    return torch.full_like(image, float(fill))
