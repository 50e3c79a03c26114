"""occlens: occlusion sensitivity maps for image classifiers.

>>> result = occlens.explain(model, "cat.jpg", label=281)
>>> result.delta        # R x C: L - L_occl per window; negative = the region supported the prediction
>>> result.pixel_map    # H x W
"""

from __future__ import annotations

from .analysis import metrics
from .analysis.saliency import saliency
from .core.errors import ConfigError, ImageError, ModelError, OcclensError
from .core.grid import Grid
from .core.result import ClassMap, OcclusionResult
from .core.settings import Settings
from .explain import explain
from .models import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "ClassMap",
    "ConfigError",
    "Grid",
    "LoadedModel",
    "ImageError",
    "ModelError",
    "OcclensError",
    "OcclusionResult",
    "Settings",
    "__version__",
    "explain",
    "load_model",
    "metrics",
    "plot",
    "saliency",
]


def __getattr__(name: str):
    # matplotlib loads only when a figure is asked for
    if name == "plot":
        from .present.figure import plot

        return plot
    raise AttributeError(f"module 'occlens' has no attribute {name!r}")
