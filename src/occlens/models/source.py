"""A job's model, loaded where the job runs: a :class:`ModelSource` (a spec a worker process can load again)
or a :class:`LoadedModel`, which is used where it is and never moved."""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from ..core.source import spec_source
from .device import same_device
from .load import load_model
from .loaded import LoadedModel, ModelSource


def load_source(source: ModelSource, device: str | torch.device | None = None) -> LoadedModel:
    """The model :func:`load_model` loads from ``source`` (what it was given before), on ``device``."""
    return load_model(source.spec, source.weights, preprocess=source.preprocess, description=source.description,
                      trust_pickle=source.trust_pickle, device=device)  # fmt: skip


def as_source(model) -> LoadedModel | ModelSource:
    """``model`` for a job that reads image files: a :class:`LoadedModel` as it is, a spec (or None, the
    default model) as the :class:`ModelSource` to load once the job's options are checked."""
    source = spec_source(model)
    if source is not None:
        return source
    if isinstance(model, (LoadedModel, ModelSource)):
        return model
    raise ConfigError(
        f"model must be a LoadedModel (from occlens.load_model) or a model spec ('default', 'timm:NAME', a file), "
        f"got {type(model).__name__}; this job reads image files, so it needs the model's preprocessing and class "
        f"names: load a module as one, occlens.load_model(module, preprocess='imagenet') (or a weights enum)"
    )


def loaded(model: LoadedModel | ModelSource, device: str | torch.device | None) -> LoadedModel:
    """``model`` loaded on ``device`` (None: CUDA when available); a LoadedModel elsewhere is refused, not moved."""
    if isinstance(model, ModelSource):
        return load_source(model, device)
    same_device(model.device, device, "load it there (occlens.load_model(..., device={device}))")
    return model
