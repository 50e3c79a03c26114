"""occlens: occlusion sensitivity maps for image classifiers.

>>> model = occlens.load_model()                               # the default ImageNet model
>>> result = occlens.explain(model, "cat.jpg", label="tabby")
>>> result.delta        # R x C: L - L_occl per window; negative = the region supported the prediction
>>> result.plot()       # the figure (a notebook shows the result as it)
>>> occlens.run("val/", "runs/val")                            # a whole dataset, resumable, with a report

The package is layered, each layer importing only those below it (the README's module map):
``cli`` > ``app`` > ``analysis`` | ``present`` > ``explain`` > ``engines`` > ``models`` > ``graph`` > ``core``.
"""

from __future__ import annotations

from .analysis import metrics
from .analysis.saliency import saliency
from .app.evaluate import Evaluation, evaluate
from .app.runs import RunReport, run
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
    "Evaluation",
    "Grid",
    "ImageError",
    "LoadedModel",
    "ModelError",
    "OcclensError",
    "OcclusionResult",
    "RunReport",
    "Settings",
    "__version__",
    "evaluate",
    "explain",
    "load_model",
    "metrics",
    "plot",
    "run",
    "saliency",
]


def __getattr__(name: str):
    # matplotlib loads only when a figure is asked for
    if name == "plot":
        from .present.figure import plot

        return plot
    raise AttributeError(f"module 'occlens' has no attribute {name!r}")
