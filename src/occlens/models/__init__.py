"""Models: loading, descriptions, preprocessing and the forward wrapper. One job a module:

* ``load``: :func:`load_model`, a spec to a checked :class:`LoadedModel`;
* ``source``: a job's model (a LoadedModel or a :class:`ModelSource`) loaded where the job runs;
* ``loaded``: :class:`LoadedModel` and :class:`ModelSource`, and ``unwrap`` for the entry points;
* ``description``: :class:`Description`, description and labels files;
* ``architectures``: ``torchvision:NAME`` / ``timm:NAME`` built, with their libraries' preprocessing;
* ``torch_files``: TorchScript files, trusted pickles and state dicts;
* ``huggingface``: folders written by ``save_pretrained``; ``adapters``: ONNX Runtime and numpy models;
* ``default``: the default EfficientNet-Lite0; ``imagenet``: ImageNet's class names;
* ``preprocess``: :class:`Preprocess` (photo to [0, 1] input), :class:`Normalized`, the ImageNet defaults;
* ``device``: which device runs a model, and the one check that a placed model runs where it is;
* ``runner``: the caller's model run without changing it; ``forward``: the model call every engine makes.
"""

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
