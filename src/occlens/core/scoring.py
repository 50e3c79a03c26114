"""Class log-probabilities from model scores, checked, in float64.

``log P(y=c | x)`` is ``log_softmax`` of logits, ``log(max(p, tiny))`` of
probabilities, or the scores themselves when they already are log-probabilities;
never ``log(softmax(...))``. A sigmoid head (``output="sigmoid"``: multi-label, each
class its own Bernoulli) gives ``log σ(z_c)`` per class. A model with one output is a
binary classifier: class 1 is ``σ(z)`` (or the probability or log-probability it
returns), class 0 the rest, ``log σ(-z)``; both maps are exact. The loss of class ``c`` is
``-log P(y=c | x)`` and the seed's ``δL_i = L_nooccl - L_occl_i``.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .checks import OUTPUTS, check_output  # noqa: F401 (their old home)
from .errors import ConfigError, ModelError, UnknownClass, shown

INDEX = re.compile(r"-?[0-9]+")  # a class index as text: ASCII digits only ("²" is a digit to str.isdigit)
TINY = torch.finfo(torch.float32).tiny
PROB_TOLERANCE = 1e-3


def _unwrapped(raw):
    """What a model returned, as a tensor where it can be one: a Hugging Face output object's ``logits``,
    torchvision's segmentation dict's ``out``, a tuple's first tensor, an array as a tensor; anything else (a
    detector's list of dicts) as it is."""
    if hasattr(raw, "logits") and not isinstance(raw, torch.Tensor):
        raw = raw.logits
    if isinstance(raw, Mapping) and isinstance(raw.get("out"), torch.Tensor):
        raw = raw["out"]
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], torch.Tensor):
        raw = raw[0]
    if not isinstance(raw, torch.Tensor):
        try:
            raw = torch.as_tensor(raw)
        except (TypeError, ValueError, RuntimeError):
            pass  # the caller says what is wrong
    return raw


def model_output(raw, batch: int):
    """What a model returned for ``batch`` images (:func:`_unwrapped`), its first axis checked when it has one:
    batch rows of it can be sliced for each image of a shared batch."""
    raw = _unwrapped(raw)
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], Mapping) and len(raw) != batch:
        raise ModelError(
            f"the model returned a list of {len(raw)} for a batch of {batch} images; expected {batch}, one per image"
        )
    if isinstance(raw, torch.Tensor) and raw.ndim >= 1 and raw.shape[0] != batch:
        raise ModelError(
            f"the model returned an output of shape {tuple(raw.shape)} for a batch of {batch} images; "
            f"expected {batch} rows, one per image"
        )
    return raw


def scores_of(raw, batch: int) -> torch.Tensor:
    """The N x classes score tensor from what a model returned, shape and values checked."""
    raw = _unwrapped(raw)
    if not isinstance(raw, torch.Tensor):
        raise ModelError(
            f"the model returned {type(raw).__name__}; it must return an N x classes tensor or array of scores"
        )
    if raw.ndim != 2 or raw.shape[0] != batch:
        raise ModelError(
            f"the model returned scores of shape {tuple(raw.shape)} for a batch of {batch} images; "
            f"expected ({batch}, number_of_classes)"
        )
    if raw.shape[1] < 1:
        raise ModelError("the model returned no class scores (0 columns); a classifier returns at least 1 per image")
    if not raw.is_floating_point():
        raise ModelError(f"the model returned {raw.dtype} scores; expected floating-point scores")
    return raw


def log_probs(scores: torch.Tensor, output: str, classes: Sequence[int] | None = None) -> torch.Tensor:
    """float64 N x classes log-probabilities from N x classes scores of the declared kind, checked, detached.

    Computed where the scores are (CPU or CUDA, in float64) and returned on the CPU: all
    classes, or only the columns ``classes`` (then only those cross to the host).
    """
    s = scores.detach()
    s = s.to(s.device if s.device.type in ("cpu", "cuda") else "cpu", torch.float64)
    check_scores(s, output)
    out = formula(s, output)
    return (out if classes is None else out[:, list(classes)]).cpu()


def formula(scores: torch.Tensor, output: str) -> torch.Tensor:
    """The log-probability formula alone (differentiable; the caller picks dtype and device).

    One column (a binary classifier) becomes two: ``log P(y=0)``, ``log P(y=1)``.
    """
    if scores.shape[1] == 1:
        if output in ("logits", "sigmoid"):
            return torch.cat([F.logsigmoid(-scores), F.logsigmoid(scores)], dim=1)
        if output == "probs":
            return torch.log(torch.cat([1 - scores, scores], dim=1).clamp(min=TINY))
        return torch.cat([torch.log(-torch.expm1(scores.clamp(max=-TINY))), scores], dim=1)
    if output == "logits":
        return torch.log_softmax(scores, dim=1)
    if output == "sigmoid":
        return F.logsigmoid(scores)
    if output == "probs":
        return torch.log(scores.clamp(min=TINY))
    return scores


def check_scores(s: torch.Tensor, output: str) -> None:
    """Raise a ModelError when float64 scores ``s`` are not finite or not of the declared kind."""
    if not torch.isfinite(s).all():
        rows = torch.nonzero(~torch.isfinite(s).all(dim=1)).flatten().tolist()
        raise ModelError(
            f"the model returned NaN or infinite scores (batch rows {rows[:5]}); check the model and its input"
        )
    if s.shape[1] == 1 and output in ("probs", "log_probs"):  # a binary classifier's P(y=1), or its log
        low, high = (0.0, 1.0) if output == "probs" else (-float("inf"), 0.0)
        if float(s.min()) < low - PROB_TOLERANCE or float(s.max()) > high + PROB_TOLERANCE:
            kind = "probability" if output == "probs" else "log-probability"
            raise ModelError(
                f"output={output!r} but the one score per image is not a {kind} (range [{float(s.min()):.4g}, "
                f"{float(s.max()):.4g}]); if the model returns a logit, use output='logits'"
            )
    elif output == "probs":
        sums = s.sum(dim=1)
        if (
            float(s.min()) < -PROB_TOLERANCE
            or float(s.max()) > 1 + PROB_TOLERANCE
            or not torch.allclose(sums, torch.ones_like(sums), atol=PROB_TOLERANCE)
        ):
            raise ModelError(
                f"output='probs' but the scores are not probabilities (range [{float(s.min()):.4g}, "
                f"{float(s.max()):.4g}], row sums up to {float((sums - 1).abs().max() + 1):.4g}); "
                f"if the model returns logits, use output='logits'"
            )
    elif output == "log_probs":
        sums = torch.logsumexp(s, dim=1)
        if float(s.max()) > PROB_TOLERANCE or not torch.allclose(sums, torch.zeros_like(sums), atol=PROB_TOLERANCE):
            raise ModelError(
                f"output='log_probs' but exp(scores) do not sum to 1 (logsumexp up to {float(sums.abs().max()):.4g}); "
                f"if the model returns logits, use output='logits'"
            )


def check_class(value, n_classes: int | None, name: str = "label", names: Sequence[str] | None = None) -> int | None:
    """A class (label or target) as an index: an int or a one-element tensor, or, when the model's
    ``names`` are known, a class name (case-insensitive) or an index written as a string; checked against ``n_classes``
    (or ``len(names)``). None stays None. ``name`` names the option in messages."""
    if value is None:
        return None
    count = len(names) if names is not None else n_classes
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, str):  # a name, or an index as the command line writes it
        text = value.strip()
        exact = names is not None and text in names  # a class named "5" is that class, whatever its index
        if names is None or exact or not INDEX.fullmatch(text):
            return _by_name(text, names, name)
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "a class index (int) or a class name (str)"
        raise ConfigError(f"{name} must be {expected}, got {shown(value)}", value=value, expected=expected)
    if count is not None and not 0 <= int(value) < count:
        raise ConfigError(f"{name} {value} is out of range: the model has {count} classes (0..{count - 1})")
    return int(value)


def check_truth(value, n_classes: int | None, name: str = "label", names: Sequence[str] | None = None):
    """A true label as :func:`check_class` reads it, or several (a list or tuple: a multi-label truth) as a
    tuple of distinct indices, in the order given. None stays None."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{name} is an empty list; give one class, several classes, or None")
        return tuple(dict.fromkeys(check_class(v, n_classes, name, names) for v in value))
    return check_class(value, n_classes, name, names)


def _by_name(text: str, names: Sequence[str] | None, name: str) -> int:
    """The index of class name ``text``; unknown names get suggestions."""
    if names is None:
        raise ConfigError(
            f"{name} {text!r} is a string, but the model's class names are unknown; pass the class index (an int), "
            f"or a LoadedModel with labels (occlens.load_model(..., description={{'labels': FILE}})) to use names"
        )
    if text in names:
        return list(names).index(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text.lower(), lowered, n=4, cutoff=0.6)
    close += [n for n in lowered if text.lower() in n and n not in close][: 6 - len(close)]
    hint = f"; did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close else ""
    raise UnknownClass(
        f"{name} {text!r} is not a class name{hint} (the model's labels list its names)",
        value=text, expected="one of the model's class names", fix="use a name the model's labels list",
    )  # fmt: skip


def split_labels(text: str) -> str | list[str]:
    """A label as typed (a flag, a form field, a CSV cell): ``"3;7"`` or ``"cat; dog"`` is a multi-label truth
    (the list of its parts); anything else, one label, as it is."""
    if ";" not in text:
        return text
    return [part.strip() for part in text.split(";") if part.strip()]
