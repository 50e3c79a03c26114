"""Models: the default ImageNet classifier, ImageNet labels, preprocessing and input normalisation."""

from __future__ import annotations

from .adapters import Classifier, NumpyModel, OnnxModel
from .default import LoadedModel, load_default_model
from .imagenet import imagenet_labels
from .load import Description, load_model, read_labels
from .preprocess import Normalized, Preprocess

__all__ = [
    "Classifier",
    "Description",
    "LoadedModel",
    "Normalized",
    "NumpyModel",
    "OnnxModel",
    "Preprocess",
    "imagenet_labels",
    "load_default_model",
    "load_model",
    "read_labels",
]
