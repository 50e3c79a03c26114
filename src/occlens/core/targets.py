"""What a map explains: a *target*, a value that says which scalar of the model's output the map is about.

A target reduces the model's output for N images to N x T scores ``s`` (T sub-targets from the same forward
passes), higher = more of the thing explained; ``L = -s`` and ``δL_i = L - L_occl_i``, so a negative δL
always means "the region supported it". Bound to one image (:meth:`Target.bind`, on its clean pass) it
becomes a :class:`Bound`: the sub-targets' names and the function that scores any batch of the model's
output. The engines know only that function; a new kind of target needs no change to them.

Targets are small frozen values: they pickle (worker processes, Ray) and have a canonical spelling,
:meth:`Target.spec`, which the JSON, the manifest and the run fingerprint record, and which
:func:`parse_target` reads back from the command line or a form (``281``, ``tabby``, ``KIND:ARGS`` for a
registered kind). The classification cases are instances: :class:`Predicted` (the default: the class Q
the model predicts), :class:`Class` (``target=`` a class index or name; its spec is the index, as the JSON
always had it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .errors import ConfigError, option, shown
from .scoring import check_class, log_probs, scores_of

Score = Callable[[object, int], np.ndarray]  # (the model's raw output for n images, n) -> n x T float64


@dataclass(frozen=True)
class Clean:
    """One image's clean pass, what a target is bound with."""

    output: object  # what the model returned for the unoccluded image (a batch of one)
    log_probs: np.ndarray  # its class log-probabilities, float64 (the head applied)
    head: str  # the model's output kind: logits, probs, log_probs or sigmoid
    names: Sequence[str] | None  # the model's class names, when known


@dataclass(frozen=True)
class Bound:
    """A target bound to one image: its sub-targets and how to score them on any batch of the model's output.

    ``classes``: when every sub-target is a class's log-probability, those classes (the engines then score
    them together with the true classes in one pass); else None and ``score`` says how.
    """

    names: tuple[str, ...]
    score: Score
    classes: tuple[int, ...] | None = None


@runtime_checkable
class Target(Protocol):
    """Which scalar(s) of the model's output a map explains. Implement both methods on a frozen dataclass."""

    def bind(self, clean: Clean) -> Bound:
        """This target for one image, given its clean pass (the class Q found, a class name looked up...)."""
        ...

    def spec(self) -> int | str | None:
        """The canonical spelling, a JSON value that :func:`parse_target` reads back."""
        ...


def class_scores(classes: Sequence[int], head: str) -> Score:
    """The score of classes: their log-probabilities, ``log P(y=k | x)``, float64."""
    chosen = list(classes)
    return lambda raw, n: log_probs(scores_of(raw, n), head, chosen).numpy()


def _class_bound(k: int, clean: Clean) -> Bound:
    name = clean.names[k] if clean.names is not None else str(k)
    return Bound((name,), class_scores([k], clean.head), (k,))


@dataclass(frozen=True)
class Predicted:
    """The class the model predicts on the unoccluded image, Q (the default target)."""

    def bind(self, clean: Clean) -> Bound:
        return _class_bound(int(np.argmax(clean.log_probs)), clean)

    def spec(self) -> None:
        return None


@dataclass(frozen=True)
class Class:
    """One class, by index or (with the model's names) by name."""

    cls: int | str

    def bind(self, clean: Clean) -> Bound:
        return _class_bound(check_class(self.cls, len(clean.log_probs), option("target"), clean.names), clean)

    def spec(self) -> int | str:
        return self.cls


KINDS: dict[str, Callable[[str], Target]] = {}  # KIND -> parse(ARGS), for the spelling KIND:ARGS


def register(kind: str, parse: Callable[[str], Target]) -> None:
    """Make ``KIND:ARGS`` a spelling of targets (``parse(ARGS)`` builds one) on the command line and in forms."""
    KINDS[kind] = parse


def as_target(value) -> Target:
    """``target=`` as the public functions take it: None (the prediction), a class index or name, a target."""
    if value is None:
        return Predicted()
    if isinstance(value, Target):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, str):
        return parse_target(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return Class(int(value))
    raise ConfigError(
        f"{option('target')} must be a class index or name, or a target (occlens.targets), got {shown(value)}",
        option="target", value=value, expected="a class index or name, or a target",
    )  # fmt: skip


def parse_target(text: str) -> Target:
    """A target from its spelling: ``KIND:ARGS`` of a registered kind, else a class (index or name)."""
    kind, sep, args = text.partition(":")
    if sep and kind.strip() in KINDS:
        return KINDS[kind.strip()](args)
    return Class(text)


def spec_of(target) -> int | str | None:
    """The canonical spelling of ``target=`` as given (None, a class, a target)."""
    return as_target(target).spec()


def resolve_target(value, names: Sequence[str] | None):
    """``target=`` checked before any image, as runs record it: None for the prediction, a class's index (a
    name looked up in ``names``), or a target value of another kind as it is."""
    target = as_target(value)
    if isinstance(target, Predicted):
        return None
    if isinstance(target, Class):
        return check_class(target.cls, None, option("target"), names)
    return target
