"""Models: the default ImageNet classifier, ImageNet labels, preprocessing and input normalisation."""

from __future__ import annotations

from .default import LoadedModel, load_default_model
from .imagenet import imagenet_labels
from .preprocess import Normalized, Preprocess

__all__ = ["LoadedModel", "Normalized", "Preprocess", "imagenet_labels", "load_default_model"]
