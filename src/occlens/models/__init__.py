"""Models: the default ImageNet classifier, ImageNet labels, preprocessing and input normalisation."""

from __future__ import annotations

from .adapters import Classifier, NumpyModel, OnnxModel
from .default import load_default_model
from .description import Description, read_labels
from .device import pick_device
from .imagenet import imagenet_labels
from .load import load_model
from .loaded import LoadedModel, ModelSource
from .preprocess import Normalized, Preprocess

__all__ = [
    "Classifier",
    "Description",
    "LoadedModel",
    "ModelSource",
    "Normalized",
    "NumpyModel",
    "OnnxModel",
    "Preprocess",
    "imagenet_labels",
    "load_default_model",
    "load_model",
    "pick_device",
    "read_labels",
]
