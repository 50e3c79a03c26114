"""What a model was loaded from, as plain data: :class:`ModelSource` (the spec, the weights and description
given to :func:`occlens.load_model`), which another process can load again and a finished run can be checked
against without loading it. No torch here: a resumed run that has nothing left to do answers without it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

RANDOM = "random"  # weights= of an architecture built with random weights on purpose (no warning)
DESCRIPTION_KEYS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order", "output", "labels",
                    "num_classes")  # what a model description may say (occlens.models.description)  # fmt: skip


@dataclass(frozen=True)
class ModelSource:
    """What :func:`occlens.load_model` was given, so that another process (a Ray worker) can load the same model."""

    spec: str = "default"
    weights: str | None = None
    description: Any = None  # a path or a mapping
    trust_pickle: bool = False
    preprocess: Any = None  # load_model's preprocess=, in its canonical spelling (occlens.core.checks.check_preprocess)


def spec_source(model) -> ModelSource | None:
    """``model`` given as a spec (a name or a file's path; None: the default model) as its :class:`ModelSource`;
    None for anything else (a loaded model, a module)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return ModelSource("default" if model is None else str(model))
    return None
