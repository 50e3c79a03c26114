"""Gradient saliency (Simonyan et al., 2014): the backward-pass counterpart of occlusion, for comparison.

``saliency(model, image)`` is the H x W map ``max_c |∂ log P(y=Q | x) / ∂x[c, h, w]|``, the gradient taken
with respect to the [0, 1] image (before the model's normalisation, where occlusion also works). The
gradient is taken with ``torch.autograd.grad`` with respect to the input only: nothing accumulates in the
parameters' ``.grad`` and the model's train/eval modes are restored. Larger values: a small change of
that pixel moves the class's log-probability more. Unlike occlusion it needs a differentiable torch
model; numpy and ONNX models raise a ModelError.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, ModelError
from ..core.image import to_tensor
from ..core.result import OcclusionResult, frozen_array
from ..core.scoring import check_class, check_output, formula, log_probs, scores_of
from ..models.forward import call_model
from ..models.loaded import unwrap
from ..models.runner import prepared

METHODS = ("gradient", "gradient_x_input")


def saliency(
    model: Any,
    image: Any,
    target: int | str | None = None,
    *,
    method: str = "gradient",
    output: str | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """The H x W gradient saliency map of class ``target`` (default: the prediction Q).

    ``method="gradient"``: ``max_c |∂ log P(y=Q | x) / ∂x_c|``; ``"gradient_x_input"``:
    ``max_c |x_c · ∂ log P(y=Q | x) / ∂x_c|``. Both are >= 0, larger = more salient. ``model``,
    ``image``, ``output`` and ``device`` are as in :func:`occlens.explain`. Returns a read-only
    float64 array.
    """
    if method not in METHODS:
        raise ConfigError(f"saliency method must be one of {', '.join(METHODS)}, got {method!r}")
    model, image, output, names = unwrap(model, image, output)
    check_output(output)
    x = to_tensor(image)
    with prepared(model, device) as runner, torch.inference_mode(False), torch.enable_grad():
        x_dev = x.to(runner.device, runner.dtype).clone().requires_grad_(True)
        raw = call_model(runner.forward, x_dev[None], "the image", grad=True)
        scores = scores_of(raw, 1)
        clean = log_probs(scores, output)[0]  # checked, detached: picks Q
        cls = int(clean.argmax()) if target is None else check_class(target, clean.shape[0], "target", names)
        assert cls is not None  # check_class gives None for None only
        if not scores.requires_grad:
            raise ModelError(
                f"the model's scores carry no gradient (a numpy, ONNX or no_grad model: {type(model).__name__}); "
                f"saliency needs a differentiable torch model, occlusion (occlens.explain) works with any"
            )
        (grad,) = torch.autograd.grad(formula(scores.to(torch.float64), output)[0, cls], x_dev, allow_unused=True)
    if grad is None:
        raise ModelError(
            f"the model's score of class {cls} does not depend on the image through autograd; "
            f"saliency needs a differentiable torch model, occlusion (occlens.explain) works with any"
        )
    g = grad.detach().to("cpu", torch.float64)
    if method == "gradient_x_input":
        g = g * x.to(torch.float64)
    return frozen_array(g.abs().amax(dim=0).numpy())


def saliency_rows(
    model: Any, image: Any, result: OcclusionResult, *, method: str = "gradient", output: str | None = None
) -> list[np.ndarray]:
    """Saliency maps for the classes of ``result``'s figure rows: the explained class, then K if mapped."""
    classes = [result.target] + ([result.label] if result.label_map is not None else [])
    return [saliency(model, image, k, method=method, output=output) for k in classes]
