"""ImageNet-1k class names, from torchvision's weights metadata (shipped with torchvision, no download)."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, e.g. ``imagenet_labels()[281] == "tabby"``."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
