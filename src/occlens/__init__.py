"""occlens: occlusion sensitivity maps for image classifiers.

>>> model = occlens.load_model()                               # the default ImageNet model
>>> result = occlens.explain(model, "cat.jpg", label="tabby")
>>> result.delta        # R x C: L - L_occl per window; negative = the region supported the prediction
>>> result.plot()       # the figure (a notebook shows the result as it)
>>> occlens.run("val/", "runs/val")                            # a whole dataset, resumable, with a report

The package is layered, each layer importing only those below it (the README's module map):
``cli`` > ``app`` > ``analysis`` | ``present`` > ``explanation`` > ``engines`` > ``models`` > ``graph`` > ``core``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# each public name and the module it comes from: imported when first used, so that `import occlens` (and the
# command's --help) does not load torch until something needs it
_MODULES = {"metrics": ".analysis.metrics", "targets": ".targets"}  # public modules
_LAZY = {
    **_MODULES,
    "saliency": ".analysis.saliency",
    "Evaluation": ".app.evaluate",
    "evaluate": ".app.evaluate",
    "Insight": ".app.insight",
    "insight": ".app.insight",
    "RunReport": ".app.runs",
    "run": ".app.runs",
    "ConfigError": ".core.errors",
    "ImageError": ".core.errors",
    "ModelError": ".core.errors",
    "OcclensError": ".core.errors",
    "Grid": ".core.grid",
    "VolumeGrid": ".core.grid",
    "read_bands": ".core.medical",
    "read_volume": ".core.medical",
    "ClassMap": ".core.result",
    "OcclusionResult": ".core.result",
    "Settings": ".core.settings",
    "Bands": ".core.volume",
    "Volume": ".core.volume",
    "explain": ".explanation",
    "LoadedModel": ".models",
    "load_model": ".models",
    "plot": ".present.figure",  # matplotlib loads only when a figure is asked for
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from . import targets
    from .analysis import metrics
    from .analysis.saliency import saliency
    from .app.evaluate import Evaluation, evaluate
    from .app.insight import Insight, insight
    from .app.runs import RunReport, run
    from .core.errors import ConfigError, ImageError, ModelError, OcclensError
    from .core.grid import Grid, VolumeGrid
    from .core.medical import read_bands, read_volume
    from .core.result import ClassMap, OcclusionResult
    from .core.settings import Settings
    from .core.volume import Bands, Volume
    from .explanation import explain
    from .models import LoadedModel, load_model
    from .present.figure import plot

__all__ = [
    "Bands",
    "ClassMap",
    "ConfigError",
    "Evaluation",
    "Grid",
    "ImageError",
    "Insight",
    "LoadedModel",
    "ModelError",
    "OcclensError",
    "OcclusionResult",
    "RunReport",
    "Settings",
    "Volume",
    "VolumeGrid",
    "__version__",
    "evaluate",
    "explain",
    "insight",
    "load_model",
    "metrics",
    "plot",
    "read_bands",
    "read_volume",
    "run",
    "saliency",
    "targets",
]  # the same names as _LAZY (a test holds them equal)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'occlens' has no attribute {name!r}")
    import importlib
    import inspect

    from .core.errors import import_quietly, public

    import_quietly()  # no warnings that are not ours in a notebook (tqdm's, through timm)
    value = importlib.import_module(module, __name__)
    if name not in _MODULES:  # a name inside the module
        value = getattr(value, name)
        if inspect.isfunction(value):  # a user's error ends its traceback at the user's call (public's doc)
            value = public(value)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
