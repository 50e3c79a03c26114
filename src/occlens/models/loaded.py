"""What a loaded model is: :class:`LoadedModel` (a ready classifier with its preprocessing and class names)
and :class:`ModelSource` (what it was loaded from, so that another process can load it again); :func:`unwrap`
takes one apart for an entry point."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from ..core.image import read_image
from ..core.source import RANDOM, ModelSource  # noqa: F401 (where they were; torch-free in core.source)
from .preprocess import Preprocess


@dataclass(frozen=True)
class LoadedModel:
    """A ready classifier: ``module`` takes [0, 1] N x 3 x H x W input (it normalises inside), in eval mode.

    Pass it to :func:`occlens.explain` as it is: photos are then preprocessed with ``preprocess``, the
    scores read as ``output``, and classes may be given by name (``labels``). ``patch``: the window that
    aligns with the model's patch embedding (a ViT's or Swin's patch size; None for a model without one).
    ``preprocess_from``: where ``preprocess`` comes from, as results record it (``"imagenet"``, a torchvision
    weights name, ``"timm pretrained_cfg"``...; None: not said). ``random_weights``: an architecture built
    by name without trained weights, whose predictions mean nothing (results and figures say so).
    """

    name: str
    module: torch.nn.Module
    preprocess: Preprocess
    labels: tuple[str, ...]
    output: str = "logits"
    source: ModelSource | None = None  # how it was loaded; None for one built by hand
    patch: int | None = None  # the window that aligns with the model's patch embedding; None: no patch grid
    preprocess_from: str | None = None
    random_weights: bool = False

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (the CPU for a model without any, such as an ONNX session)."""
        ref = next((t for t in self.module.parameters()), None) if isinstance(self.module, torch.nn.Module) else None
        return ref.device if ref is not None else torch.device("cpu")

    def __repr__(self) -> str:
        patch = "" if self.patch is None else f", patch={self.patch}"
        random = ", random weights" if self.random_weights else ""
        return (
            f"LoadedModel({self.name!r}, {len(self.labels)} classes, input {self.preprocess.size[0]}x"
            f"{self.preprocess.size[1]}, output={self.output!r}{patch}{random}, device={str(self.device)!r})"
        )


def unwrap(model, image, output: str | None, max_pixels: int | None = None):
    """``(model, image, output, names)`` as every entry point takes them. A :class:`LoadedModel` gives its
    module, its preprocessing of a path or PIL image, its output kind (unless ``output`` is given) and its
    class names; any other model is kept as it is, a path is read at its own size, and names are unknown."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image, max_pixels=max_pixels)
    if not isinstance(model, LoadedModel):
        return model, image, "logits" if output is None else output, None
    if isinstance(image, Image.Image):
        image = model.preprocess(image)
    return model.module, image, model.output if output is None else output, model.labels
