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

import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .errors import ConfigError, ModelError, option, shown
from .scoring import INDEX, _unwrapped, check_class, formula, log_probs, scores_of

Score = Callable[[object, int], np.ndarray]  # (the model's raw output for n images, n) -> n x T float64
SEGMENTER_NDIM = (4, 5)  # a segmenter's output: N x classes x h x w (an image), N x classes x d x h x w (a volume)


@dataclass(frozen=True)
class Clean:
    """One image's clean pass, what a target is bound with."""

    output: object  # what the model returned for the unoccluded image (a batch of one)
    log_probs: np.ndarray | None  # its class log-probabilities, float64 (the head applied); None: not class scores
    head: str  # the model's output kind: logits, probs, log_probs or sigmoid
    names: Sequence[str] | None  # the model's class names, when known
    label: int | None = None  # the true class K, when given (one class)
    # the image as given (a photo before preprocessing): height, width; a volume's depth, height, width
    given: tuple[int, ...] | None = None
    frame: tuple[float, float, float, float] | None = None  # the part of it the model sees: left, top, right, bottom
    size: tuple[int, ...] | None = None  # the model's input: (depth,) height, width (a detector's boxes: its pixels)


@dataclass(frozen=True)
class Bound:
    """A target bound to one image: its sub-targets and how to score them on any batch of the model's output.

    ``classes``: when every sub-target is a class's log-probability, those classes (the engines then score
    them together with the true classes in one pass); else None and ``score`` says how. ``kind``: what the
    result records as ``target_kind``; ``info``: one JSON-able dict per sub-target (its class, its region's
    size, its box...), which the result's JSON lists beside each map; ``arrays``: what a figure draws (a
    segmenter's clean mask, the regions), saved in the npz.
    """

    names: tuple[str, ...]
    score: Score
    classes: tuple[int, ...] | None = None
    kind: str = "class"
    info: tuple[Mapping[str, Any], ...] = ()
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


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


def returned(raw) -> str:
    """What a model returned, in words, for messages: ``a tensor of shape (1, 21, 64, 64)``, ``a list of 1 dict
    (boxes, labels, scores)``..."""
    out = _unwrapped(raw)
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):
        return f"a list of {len(out)} dict ({', '.join(map(str, out[0]))})"
    if isinstance(out, Mapping):
        return f"a dict ({', '.join(map(str, out))})"
    return f"a {type(out).__name__}"


def _mismatch(kind: str, needs: str, clean: Clean, fix: str) -> ConfigError:
    """The one line for a target that does not fit what the model returns."""
    return ConfigError(
        f"{option('target')} {kind} needs {needs}, but the model returned {returned(clean.output)}; {fix}",
        option="target", value=kind, expected=needs, fix=fix,
    )  # fmt: skip


def _class_log_probs(clean: Clean, kind: str) -> np.ndarray:
    """The clean class log-probabilities, or the line that says the model returns no class scores."""
    if clean.log_probs is None:
        if not _dense_output(clean.output):
            scores_of(clean.output, 1)  # a classifier's output of the wrong shape: its own message
        raise _mismatch(kind, "class scores (an N x classes tensor)", clean, "explain " + _suggestion(clean.output))
    return clean.log_probs


def _dense_output(raw) -> bool:
    """Whether ``raw`` is a segmenter's (per-pixel or per-voxel scores) or a detector's (a list of dicts) output."""
    out = _unwrapped(raw)
    return (isinstance(out, torch.Tensor) and out.ndim in SEGMENTER_NDIM) or (
        isinstance(out, (list, tuple)) and bool(out) and isinstance(out[0], Mapping)
    )


def _suggestion(raw) -> str:
    """The target that fits a non-class output."""
    out = _unwrapped(raw)
    if isinstance(out, torch.Tensor) and out.ndim in SEGMENTER_NDIM:
        return "a segment of it: target='segment' (occlens.targets.segment())"
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):
        return "its boxes: target='box' (occlens.targets.box())"
    if isinstance(out, torch.Tensor) and out.ndim == 2:
        return "a class (target=CLASS), a margin (margin:Q,K) or one of its outputs (regression:J)"
    if isinstance(out, torch.Tensor) and out.ndim == 3 and out.shape[2] >= 6:
        return (
            "its boxes, if these are N x D x (4 + 1 + classes) detections: target='box' (its description "
            "may declare output='detections')"
        )
    return "one of its outputs: target='regression:0' (occlens.targets.regression(0)), or target=a function"


def _class_bound(k: int, clean: Clean) -> Bound:
    name = clean.names[k] if clean.names is not None else str(k)
    return Bound((name,), class_scores([k], clean.head), (k,))


@dataclass(frozen=True)
class Predicted:
    """The class the model predicts on the unoccluded image, Q (the default target; a segmenter's default is
    every predicted segment, :class:`Segment`)."""

    def bind(self, clean: Clean) -> Bound:
        if clean.log_probs is None and clean.head == "regression":  # declared: output 0, in the model's units
            return Regression(0).bind(clean)
        if clean.log_probs is None and (_dense_output(clean.output) or clean.head == "detections"):
            out = _unwrapped(clean.output)  # a segmenter's: every predicted segment; a detector's: every box
            if isinstance(out, torch.Tensor) and out.ndim in SEGMENTER_NDIM:
                return Segment().bind(clean)
            return BoxTarget().bind(clean)
        return _class_bound(int(np.argmax(_class_log_probs(clean, "the predicted class"))), clean)

    def spec(self) -> None:
        return None


@dataclass(frozen=True)
class Class:
    """One class, by index or (with the model's names) by name."""

    cls: int | str

    def bind(self, clean: Clean) -> Bound:
        count = len(_class_log_probs(clean, f"class {self.cls!r}"))
        return _class_bound(check_class(self.cls, count, option("target"), clean.names), clean)

    def spec(self) -> int | str:
        return self.cls


def _cls(value: int | str, count: int, clean: Clean, kind: str | None = None) -> int:
    return check_class(value, count, option("target") + ("" if kind is None else f" {kind}'s class"), clean.names)


def _name(k: int, clean: Clean) -> str:
    return clean.names[k] if clean.names is not None and k < len(clean.names) else str(k)


def _floats(raw, n: int, what: str) -> np.ndarray:
    """``raw`` (a tensor or array of n or n x T numbers) as an n x T float64 array, checked finite."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(raw, dtype=np.float64)
    a = a.reshape(n, 1) if a.ndim == 1 and a.shape[0] == n else a
    if a.ndim != 2 or a.shape[0] != n:
        raise ModelError(f"{what} gave shape {a.shape} for a batch of {n} images; expected ({n},) or ({n}, T)")
    if not np.isfinite(a).all():
        raise ModelError(f"{what} gave NaN or infinite scores; check the model and its input")
    return a


# --- regression -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    """``s = y_index``: one of the model's outputs, in its own units (asked for, never inferred)."""

    index: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) or self.index < 0:
            raise ConfigError(f"regression index must be an int >= 0 (which output), got {shown(self.index)}",
                              option="target", value=self.index, expected="an int >= 0")  # fmt: skip

    def bind(self, clean: Clean) -> Bound:
        out = _unwrapped(clean.output)
        if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or not out.is_floating_point():
            raise _mismatch("regression", "an N or N x outputs tensor of numbers", clean, "explain " +
                            _suggestion(clean.output))  # fmt: skip
        count = 1 if out.ndim == 1 else out.shape[1]
        if self.index >= count:
            raise ConfigError(
                f"{option('target')} regression:{self.index} is out of range: the model returned "
                f"{returned(out)}, {count} output(s) per image (0..{count - 1})",
                option="target", value=self.index, expected=f"an output index 0..{count - 1}",
            )  # fmt: skip
        index = int(self.index)

        def score(raw, n: int) -> np.ndarray:
            y = _unwrapped(raw)
            if not isinstance(y, torch.Tensor):
                raise ModelError(f"the model returned {returned(y)}; regression needs a tensor")
            y = y.reshape(n, -1)
            return _floats(y[:, index], n, "the model")

        return Bound((f"output {index}",), score, kind="regression", info=({"index": index},))

    def spec(self) -> str:
        return f"regression:{self.index}"


def regression(index: int = 0) -> Regression:
    """The target ``s = y_index``: output ``index`` of a regression model, in its units (``δL = y_occl - y``)."""
    return Regression(index)


# --- margin ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Margin:
    """``s = log P(q) - log P(k)``: what makes the model say q rather than k (defaults: Q and the label K)."""

    q: int | str | None = None
    k: int | str | None = None

    def bind(self, clean: Clean) -> Bound:
        lp = _class_log_probs(clean, "margin")
        q = int(np.argmax(lp)) if self.q is None else _cls(self.q, len(lp), clean)
        if self.k is None and clean.label is None:
            raise ConfigError(
                f"{option('target')} margin needs the class k to compare with: give it (margin:Q,K, "
                f"occlens.targets.margin(q, k)) or a true label (one class), which is k by default",
                option="target", value=self.spec(), expected="margin:Q,K or a label", fix="give k or a label",
            )  # fmt: skip
        k = clean.label if self.k is None else _cls(self.k, len(lp), clean)
        if q == k:
            raise ConfigError(
                f"{option('target')} margin compares a class with itself ({_name(q, clean)!r}: q and k are both "
                f"{q}), which is 0 everywhere; give two different classes",
                option="target", value=self.spec(), expected="two different classes",
            )  # fmt: skip
        both = class_scores([q, k], clean.head)

        def score(raw, n: int) -> np.ndarray:
            lp = both(raw, n)
            return lp[:, :1] - lp[:, 1:]

        name = f"{_name(q, clean)} vs {_name(k, clean)}"
        info = {"q": q, "k": k, "q_name": _name(q, clean), "k_name": _name(k, clean)}
        return Bound((name,), score, kind="margin", info=(info,))

    def spec(self) -> str:
        if self.q is None and self.k is None:
            return "margin"
        return "margin:" + ("" if self.q is None else str(self.q)) + ("" if self.k is None else f",{self.k}")


def margin(q: int | str | None = None, k: int | str | None = None) -> Margin:
    """The target ``s = log P(q) - log P(k)`` (indices or names; defaults: the prediction Q and the label K):
    exactly the map of q minus the map of k, from the same forward passes."""
    return Margin(q, k)


# --- any function of the output -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """``s = fn(output)``: N scores (or N x T, T sub-targets) from what the model returned (unwrapped: a
    tensor; a Hugging Face output's ``logits``; torchvision's ``{"out": ...}``'s tensor; a detector's list)."""

    fn: Callable[[Any], Any]

    def bind(self, clean: Clean) -> Bound:
        fn, name = self.fn, _function_name(self.fn)

        def score(raw, n: int) -> np.ndarray:
            return _floats(fn(_unwrapped(raw)), n, f"target function {name}")

        count = score(clean.output, 1).shape[1]
        names = (name,) if count == 1 else tuple(f"{name}[{t}]" for t in range(count))
        return Bound(names, score, kind="callable", info=tuple({"column": t} for t in range(count)))

    def spec(self) -> str:
        return f"callable:{_function_name(self.fn)}"


def _function_name(fn) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", type(fn).__qualname__)
    return qualname if module in (None, "__main__", "builtins") else f"{module}.{qualname}"


def portable(target) -> None:
    """Raise the one line for a target that worker processes or Ray cannot receive: a function not importable
    by name (a lambda, a nested function), or anything else that does not pickle."""
    fn = target.fn if isinstance(target, Function) else None
    nested = fn is not None and ("<lambda>" in _function_name(fn) or "<locals>" in _function_name(fn))
    try:
        pickle.dumps(target)
    except Exception:  # noqa: BLE001 (whatever pickle raises, the line is the same)
        nested = True
    if nested:
        fix = "define it with def at the top level of a module the workers can import, or run without workers"
        raise ConfigError(
            f"{option('target')} {shown(fn if fn is not None else target)} cannot go to worker processes or Ray, "
            f"which need it importable by name; {fix}",
            option="target", value=target, expected="a function importable by name", fix=fix,
        )  # fmt: skip


# --- segmentation ---------------------------------------------------------------------------------------------

PIXELS_PER_CHUNK = 1 << 22  # per-pixel log-probabilities computed this many numbers at a time (float64)


def _spatial(clean: Clean) -> int | None:
    """The input's spatial rank: 2 (an image), 3 (a volume); None when the clean pass does not say."""
    known = clean.size if clean.size is not None else clean.given
    return None if known is None else len(known)


def _words(rank: int) -> tuple[str, str]:
    """What a segmenter scores and what it looks at, in words: ``pixel``, ``image``; ``voxel``, ``volume``."""
    return ("voxel", "volume") if rank == 3 else ("pixel", "image")


def _scores_needed(rank: int | None) -> str:
    if rank == 3:
        return "per-voxel class scores (N x classes x d x h x w)"
    return "per-pixel class scores (N x classes x h x w)"


def _pixel_scores(raw, n: int, clean: Clean | None = None, rank: int | None = None) -> torch.Tensor:
    """A segmenter's N x C x h x w scores (torchvision's ``{"out": ...}``, a Hugging Face output's ``logits``), or
    a volume segmenter's N x C x d x h x w; ``rank``: the input's spatial rank, when known (2 or 3)."""
    out = _unwrapped(raw)
    ranks = (rank,) if rank is not None else (2, 3)
    if isinstance(out, torch.Tensor) and out.ndim - 2 in ranks and out.shape[0] == n and out.is_floating_point():
        return out
    if clean is not None:
        raise _mismatch("segment", _scores_needed(rank), clean, "explain " + _suggestion(raw))
    raise ModelError(f"the model returned {returned(out)}; a segment target needs {_scores_needed(rank)}")


def _seen(clean: Clean, sizes: tuple[int, ...]) -> list[tuple[float, float]]:
    """The part of the input as given that the model sees, per axis (rows, columns; a volume's depth first):
    ``(low, high)`` in its pixels (an image's preprocessing crops ``frame``); all of it where nothing is cropped."""
    if clean.frame is not None and len(sizes) == 2:
        left, top, right, bottom = clean.frame
        return [(top, bottom), (left, right)]
    return [(0.0, float(s)) for s in sizes]


def _region(region, clean: Clean, shape: tuple[int, ...]) -> np.ndarray:
    """``region`` (a box or a boolean mask, in the input's pixels or voxels as given) on the model's output of
    ``shape`` (h x w, or d x h x w): the output pixels whose centres fall inside it, through the preprocessing's
    resize and crop (a volume's output may be smaller than its input, as a 2-D segmenter's may: a stride-2
    decoder's voxel ``i`` is centred on input voxel ``2i + 1``)."""
    rank = len(shape)
    sizes = tuple(clean.given) if clean.given is not None else shape
    centres = [lo + (np.arange(o) + 0.5) * (hi - lo) / o for (lo, hi), o in zip(_seen(clean, sizes), shape,
                                                                                     strict=True)]  # fmt: skip
    if isinstance(region, np.ndarray):
        if region.ndim != rank or region.shape != sizes:
            shown_shape = " x ".join(map(str, sizes))
            raise ConfigError(
                f"{option('target')} segment's region is a mask of shape {region.shape}, but the {_words(rank)[1]} is "
                f"{shown_shape}; give a boolean mask of the {_words(rank)[1]}'s shape (as given, before any resize)",
                option="target", value=region.shape, expected=f"a {shown_shape} mask",
            )  # fmt: skip
        index = [np.clip(np.floor(c).astype(int), 0, s - 1) for c, s in zip(centres, sizes, strict=True)]
        return region.astype(bool)[np.ix_(*index)]
    inside = [(c >= lo) & (c < hi) for c, (lo, hi) in zip(centres, _box_axes(region, sizes), strict=True)]
    out = np.ones(shape, dtype=bool)
    for axis, on in enumerate(inside):  # the box: the product of its intervals along each axis
        out &= on.reshape([-1 if a == axis else 1 for a in range(rank)])
    return out


def _box_axes(box, sizes: tuple[int, ...]) -> list[tuple[float, float]]:
    """A region's box as ``(low, high)`` per axis of the input: an image's ``(x0, y0, x1, y1)``, a volume's ``(z0,
    y0, x0, z1, y1, x1)``, checked inside ``sizes``; a box of the other rank is refused in one line."""
    if len(box) != 2 * len(sizes):
        rank = len(sizes)
        need = "(z0, y0, x0, z1, y1, x1), in voxels" if rank == 3 else "(x0, y0, x1, y1), in pixels"
        raise ConfigError(
            f"{option('target')} segment's region {shown(box)} is a box of {len(box)} numbers, but the input is "
            f"{'a volume' if rank == 3 else 'a 2-D image'}; give a box {need}, or a boolean mask of its shape "
            f"({' x '.join(map(str, sizes))})",
            option="target", value=box, expected=f"a box {need}",
        )  # fmt: skip
    if len(sizes) == 2:
        x0, y0, x1, y1 = check_box(box, sizes[1], sizes[0], "segment's region")
        return [(y0, y1), (x0, x1)]
    z0, y0, x0, z1, y1, x1 = check_voxel_box(box, sizes, "segment's region")
    return [(z0, z1), (y0, y1), (x0, x1)]


def check_box(box, width: int, height: int, what: str) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` in a ``width`` x ``height`` image's pixels, checked: 4 finite numbers, not
    empty, inside the image."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        expected = "(x0, y0, x1, y1)"
        raise ConfigError(f"{option('target')} {what} must be a box (x0, y0, x1, y1) or a boolean mask, got "
                          f"{shown(box)}", option="target", value=box, expected=expected) from None  # fmt: skip
    if not all(np.isfinite((x0, y0, x1, y1))) or x0 >= x1 or y0 >= y1:
        raise ConfigError(f"{option('target')} {what} {shown(box)} is empty: a box is (x0, y0, x1, y1) with x0 < x1 "
                          f"and y0 < y1", option="target", value=box, expected="x0 < x1 and y0 < y1")  # fmt: skip
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ConfigError(
            f"{option('target')} {what} {shown(box)} is outside the image, which is {width} wide and {height} high "
            f"(x in 0..{width}, y in 0..{height}, in the image's pixels as given)",
            option="target", value=box, expected=f"a box inside 0..{width} x 0..{height}",
        )  # fmt: skip
    return x0, y0, x1, y1


def check_voxel_box(box, sizes, what: str) -> tuple[float, float, float, float, float, float]:
    """A volume's box ``(z0, y0, x0, z1, y1, x1)`` (depth, rows, columns: the volume's axis order, half-open) in
    the voxels of a ``sizes`` = (depth, height, width) volume, checked as :func:`check_box` checks an image's."""
    form = "(z0, y0, x0, z1, y1, x1)"
    try:
        z0, y0, x0, z1, y1, x1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ConfigError(f"{option('target')} {what} must be a box {form} or a boolean mask, got {shown(box)}",
                          option="target", value=box, expected=form) from None  # fmt: skip
    if not all(np.isfinite((z0, y0, x0, z1, y1, x1))) or z0 >= z1 or y0 >= y1 or x0 >= x1:
        raise ConfigError(f"{option('target')} {what} {shown(box)} is empty: a volume's box is {form} with z0 < z1, "
                          f"y0 < y1 and x0 < x1", option="target", value=box,
                          expected="z0 < z1, y0 < y1 and x0 < x1")  # fmt: skip
    depth, height, width = sizes
    if min(z0, y0, x0) < 0 or z1 > depth or y1 > height or x1 > width:
        raise ConfigError(
            f"{option('target')} {what} {shown(box)} is outside the volume, which is {depth:g} deep, {height:g} high "
            f"and {width:g} wide (z in 0..{depth:g}, y in 0..{height:g}, x in 0..{width:g}, in the volume's voxels "
            f"as given)",
            option="target", value=box, expected=f"a box inside 0..{depth:g} x 0..{height:g} x 0..{width:g}",
        )  # fmt: skip
    return z0, y0, x0, z1, y1, x1


def _hashed(mask: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class Segment:
    """``s`` = the mean, over a region, of the per-pixel ``log P(cls)`` (the head's log-softmax, float64).

    ``region``: None (the pixels predicted ``cls`` on the clean image, frozen), a box ``(x0, y0, x1, y1)`` or a
    boolean mask, in the image's pixels as given (mapped through the preprocessing like the image). ``cls=None``:
    every class predicted on the clean image, one sub-target each (its own pixels; with a region, the class
    predicted most inside it). On a volume (a segmenter's N x C x d x h x w output) the same per voxel: the region
    is a D x H x W boolean mask or a box ``(z0, y0, x0, z1, y1, x1)`` (depth, rows, columns: the volume's axis
    order), in the volume's voxels as given.
    """

    cls: int | str | None = None
    region: Any = None

    def __post_init__(self) -> None:
        region = self.region
        if isinstance(region, torch.Tensor):
            region = region.detach().cpu().numpy()
        if isinstance(region, np.ndarray) and region.ndim in (2, 3):
            mask = np.array(region, dtype=bool)
            mask.flags.writeable = False
            object.__setattr__(self, "region", mask)
        elif region is not None:
            count = len(region) if isinstance(region, (tuple, list, np.ndarray)) else None
            if count not in (None, 4, 6):
                form = "(x0, y0, x1, y1) on an image, (z0, y0, x0, z1, y1, x1) on a volume"
                raise ConfigError(f"{option('target')} segment's region must be a box {form}, or a boolean mask; got "
                                  f"{count} numbers, {shown(region)}", option="target", value=region,
                                  expected=form)  # fmt: skip
            checked = check_voxel_box(region, (np.inf,) * 3, "region") if count == 6 else check_box(
                region, np.inf, np.inf, "region")  # fmt: skip
            object.__setattr__(self, "region", tuple(float(v) for v in checked))

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def bind(self, clean: Clean) -> Bound:
        z = _pixel_scores(clean.output, 1, clean, _spatial(clean)).detach()
        lp = _pixel_log_probs(z[0].reshape(z.shape[1], -1).T, clean.head)  # (d*)h*w x classes
        count, shape = lp.shape[1], tuple(z.shape[2:])
        pixel, image = _words(len(shape))
        predicted = lp.argmax(1).reshape(shape).numpy()
        region = None if self.region is None else _region(self.region, clean, shape)
        if region is not None and not region.any():
            raise ConfigError(f"{option('target')} segment's region covers no {pixel} of the model's "
                              f"{' x '.join(map(str, shape))} output (the preprocessing's crop cuts it away, or it is "
                              f"empty); give a region inside the part of the {image} the model sees",
                              option="target", value=self.spec(), expected="a region the model sees")  # fmt: skip
        if self.cls is not None:
            classes = [_cls(self.cls, count, clean, "segment")]
        elif region is not None:
            classes = [int(np.bincount(predicted[region], minlength=count).argmax())]
        else:
            classes = [int(c) for c in np.unique(predicted)]
        regions = [region if region is not None else predicted == c for c in classes]
        if not regions[0].any():
            k = classes[0]
            seen = ", ".join(_name(int(c), clean) for c in np.unique(predicted))
            raise ConfigError(
                f"{option('target')} segment:{_name(k, clean)}: no {pixel} of the clean {image} is predicted "
                f"{_name(k, clean)!r} (class {k}; predicted: {seen}); "
                f"give a region (a box or mask), or a class the model predicts",
                option="target", value=self.spec(), expected="a class the model predicts, or a region",
            )  # fmt: skip
        stack = np.stack(regions)
        union = np.flatnonzero(stack.any(0))
        where = stack.reshape(len(classes), -1)[:, union]  # T x P: each sub-target's pixels among the union's
        weights = torch.as_tensor(where / where.sum(1, keepdims=True))  # the mean over each region
        picked = torch.as_tensor(classes)
        index = torch.as_tensor(union)
        everywhere = len(union) == stack[0].size
        head, shape = clean.head, tuple(z.shape[1:])

        def score(raw, n: int) -> np.ndarray:
            z = _pixel_scores(raw, n, rank=len(shape) - 1).detach()
            if tuple(z.shape[1:]) != shape:
                raise ModelError(f"the model returned per-{pixel} scores of shape {tuple(z.shape)} on an occluded "
                                 f"copy but {(1, *shape)} on the {image}")  # fmt: skip
            flat = z.reshape(n, shape[0], -1)  # n x C x P: the union's pixels (all of them: no copy)
            flat = flat if everywhere else flat[:, :, index.to(z.device)]
            at = flat.device if flat.device.type in ("cpu", "cuda") else torch.device("cpu")
            mean = weights.to(at)
            out = np.empty((n, len(classes)))
            step = max(1, PIXELS_PER_CHUNK // max(1, flat.shape[1] * flat.shape[2]))
            for a in range(0, n, step):  # the class axis stays axis 1, as the head's formula reads it: no transpose
                part = flat[a : a + step].to(at, torch.float64)
                if head == "logits":  # log_softmax of the picked classes only: z - logsumexp(z), no b x C x P copy
                    lp = part[:, picked] - torch.logsumexp(part, dim=1, keepdim=True)  # b x T x P
                else:
                    lp = formula(part, head)[:, picked]
                out[a : a + step] = torch.einsum("btp,tp->bt", lp, mean).cpu().numpy()
            if not np.isfinite(out).all():  # a NaN or infinity in a pixel's scores reaches its log-probabilities
                raise ModelError(f"the model returned NaN or infinite per-{pixel} scores on an occluded copy; check "
                                 f"the model and its input")  # fmt: skip
            return out

        names = _unique([_name(c, clean) for c in classes])
        info = tuple({"class": c, "class_name": _name(c, clean), "pixels": int(r.sum()), "of": int(r.size)}
                     for c, r in zip(classes, regions, strict=True))  # fmt: skip
        arrays = {"segmentation": predicted.astype(np.int32), "regions": stack}
        return Bound(names, score, kind="segment", info=info, arrays=arrays)

    def spec(self) -> str:
        parts = ["segment", *([] if self.cls is None else [str(self.cls)])]
        if isinstance(self.region, np.ndarray):
            parts += ["" if self.cls is None else None, f"mask={_hashed(self.region)}"]
        elif self.region is not None:
            parts += ["" if self.cls is None else None, ",".join(f"{v:g}" for v in self.region)]
        return ":".join(p for p in parts if p is not None)


def _pixel_log_probs(z: torch.Tensor, head: str) -> torch.Tensor:
    """P x classes float64 log-probabilities of P pixels' scores (the head's formula, as a classifier's)."""
    z = z.to("cpu" if z.device.type not in ("cpu", "cuda") else z.device, torch.float64)
    if not torch.isfinite(z).all():
        raise ModelError("the model returned NaN or infinite per-pixel scores; check the model and its input")
    return formula(z, head).cpu()


def _unique(names: list[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return tuple(out)


def segment(cls: int | str | None = None, region=None) -> Segment:
    """A segmenter's target: ``s`` = mean over ``region`` of the per-pixel ``log P(cls)`` (see :class:`Segment`; on a
    volume, per voxel, ``region`` a D x H x W mask or a box ``(z0, y0, x0, z1, y1, x1)``)."""
    return Segment(cls, region)


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
    if callable(value) and not isinstance(value, (type, torch.nn.Module)):
        return Function(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, str):
        return parse_target(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return Class(int(value))
    raise ConfigError(
        f"{option('target')} must be a class index or name, a target (occlens.targets) or a function of the "
        f"model's output, got {shown(value)}",
        option="target", value=value, expected="a class index or name, a target or a function",
    )  # fmt: skip


def parse_target(text: str) -> Target:
    """A target from its spelling: ``KIND:ARGS`` of a registered kind, else a class (index or name)."""
    kind, sep, args = text.partition(":")
    if kind.strip() in KINDS:  # KIND:ARGS, or KIND alone (its defaults)
        return KINDS[kind.strip()](args if sep else "")
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


def _index_or_name(text: str) -> int | str | None:
    text = text.strip()
    if not text:
        return None
    return int(text) if INDEX.fullmatch(text) else text


def _bad_spelling(kind: str, args: str, grammar: str) -> ConfigError:
    return ConfigError(f"{option('target')} {kind}:{args} is not a {kind} target; write {grammar}",
                       option="target", value=f"{kind}:{args}", expected=grammar)  # fmt: skip


def _parse_regression(args: str) -> Regression:
    text = args.strip() or "0"
    if not INDEX.fullmatch(text) or int(text) < 0:
        raise _bad_spelling("regression", args, "regression:INDEX (an output's index, e.g. regression:0)")
    return Regression(int(text))


def _parse_margin(args: str) -> Margin:
    parts = args.split(",")
    if len(parts) > 2:
        raise _bad_spelling("margin", args, "margin:Q,K (two classes, names or indices; either may be left out)")
    q, k = (parts + [""])[:2]
    return Margin(_index_or_name(q), _index_or_name(k))


def _parse_segment(args: str) -> Segment:
    grammar = "segment, segment:CLASS, segment:CLASS:X0,Y0,X1,Y1 or on a volume segment:CLASS:Z0,Y0,X0,Z1,Y1,X1"
    cls, sep, box = args.partition(":")
    if sep and not box.strip():
        raise _bad_spelling("segment", args, grammar)
    region = None
    if sep:
        try:
            region = tuple(float(v) for v in box.split(","))
        except ValueError:
            where = " (a box in the image's pixels, the volume's voxels)"
            raise _bad_spelling("segment", args, grammar + where) from None
        if len(region) not in (4, 6):
            raise _bad_spelling("segment", args, grammar + " (a box: four numbers, six on a volume)")
    return Segment(_index_or_name(cls), region)


register("regression", _parse_regression)
register("margin", _parse_margin)
register("segment", _parse_segment)


# --- detection ------------------------------------------------------------------------------------------------

EPSILON = 1e-6  # a box's score floor: s = log max(EPSILON, IoU * score); log(1e-6) = -13.8
FLOOR_WARNING = 0.25  # warn when more than this share of a box's windows sit on the floor


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes (D x 4, x0 y0 x1 y1 in the model input's pixels), labels (D), scores (D)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor


def _detections(raw, n: int, clean: Clean | None = None) -> list[Detections]:
    """A detector's output for n images: torchvision's list of ``{"boxes", "labels", "scores"}``, or an
    N x D x (4 + 1 + classes) tensor (each row ``x0, y0, x1, y1, score, class scores...``; the class is the
    argmax of the class scores; rows with a score <= 0 are padding)."""
    out = _unwrapped(raw)
    if isinstance(out, (list, tuple)) and len(out) == n and all(isinstance(d, Mapping) for d in out):
        if all(all(k in d for k in ("boxes", "labels", "scores")) for d in out):
            return [Detections(*(torch.as_tensor(d[k]).detach().to("cpu", torch.float64).reshape(shape)
                                 for k, shape in (("boxes", (-1, 4)), ("labels", (-1,)), ("scores", (-1,)))))
                    for d in out]  # fmt: skip
    if isinstance(out, torch.Tensor) and out.ndim == 3 and out.shape[0] == n and out.shape[2] >= 6:
        a = out.detach().to("cpu", torch.float64)
        keep = a[:, :, 4] > 0
        return [Detections(a[j, keep[j], :4], a[j, keep[j], 5:].argmax(1).to(torch.float64), a[j, keep[j], 4])
                for j in range(n)]  # fmt: skip
    needs = "detections (a list of {boxes, labels, scores} per image, or N x D x (4 + 1 + classes))"
    if clean is not None:
        raise _mismatch("box", needs, clean, "explain " + _suggestion(clean.output))
    raise ModelError(f"the model returned {returned(out)} for a batch of {n} images; a box target needs {needs}")


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``a`` (T x 4) and ``b`` (D x 4), x0 y0 x1 y1: T x D, float64."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(inter))


def box_scores(found: Detections, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``max_d IoU(b_t, d) * score_d`` over the detections d of class t's, for each reference box t (0: none)."""
    if found.boxes.shape[0] == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.float64)
    match = iou(boxes, found.boxes) * found.scores[None, :]
    match = torch.where(found.labels[None, :] == classes[:, None], match, torch.zeros_like(match))
    return match.max(1).values


def _in_input(box, clean: Clean, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box in the image's pixels as given, in the model input's pixels (through the resize and crop), clipped
    to the input; refused when the crop cuts it away."""
    h, w = size
    height, width = clean.given if clean.given is not None else (h, w)
    x0, y0, x1, y1 = check_box(box, width, height, "box")
    left, top, right, bottom = clean.frame if clean.frame is not None else (0.0, 0.0, float(width), float(height))
    sx, sy = w / (right - left), h / (bottom - top)
    mapped = ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy)
    cx0, cy0, cx1, cy1 = max(mapped[0], 0.0), max(mapped[1], 0.0), min(mapped[2], float(w)), min(mapped[3], float(h))
    if cx0 >= cx1 or cy0 >= cy1:
        raise ConfigError(
            f"{option('target')} box {shown(box)} lies outside the part of the image the model sees (the "
            f"preprocessing's crop cuts it away: the model sees x {left:g}..{right:g}, y {top:g}..{bottom:g}); give "
            f"a box inside it",
            option="target", value=box, expected="a box the model sees",
        )  # fmt: skip
    return cx0, cy0, cx1, cy1


@dataclass(frozen=True)
class BoxTarget:
    """``s = log max(ε, max_d IoU(b, d) · score_d)`` over the detections d of the box's class on each copy.

    ``xyxy``: the reference box b, in the image's pixels as given (mapped through the preprocessing like the
    image); None: every clean detection scoring at least ``min_score``, one sub-target each, its class the
    detection's own. ``cls``: b's class (index or name); None: the class of the clean detection that matches b
    best. ε is :data:`EPSILON`.
    """

    xyxy: tuple[float, float, float, float] | None = None
    cls: int | str | None = None
    min_score: float = 0.5

    def __post_init__(self) -> None:
        if self.xyxy is not None:
            xyxy = self.xyxy.tolist() if isinstance(self.xyxy, (np.ndarray, torch.Tensor)) else self.xyxy
            object.__setattr__(self, "xyxy", check_box(xyxy, np.inf, np.inf, "box"))
        score = self.min_score
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise ConfigError(f"{option('target')} box's min_score must be a number in [0, 1], got {shown(score)}",
                              option="target", value=score, expected="a number in [0, 1]")  # fmt: skip

    def bind(self, clean: Clean) -> Bound:
        found = _detections(clean.output, 1, clean)[0]
        size = _input_size(clean)
        if self.xyxy is None:
            chosen = torch.nonzero(found.scores >= self.min_score).flatten()
            if self.cls is not None:
                k = self._class(clean)
                chosen = chosen[found.labels[chosen] == k]
            if len(chosen) == 0:
                best = f"{float(found.scores.max()):.3g}" if len(found.scores) else "none: no detection at all"
                raise ConfigError(
                    f"{option('target')} {self.spec()}: no detection on the clean image scores >= {self.min_score:g}"
                    f"{'' if self.cls is None else ' of that class'} (the best scores {best}); lower min_score "
                    f"(occlens.targets.box(min_score=...)) or give a box (box:X0,Y0,X1,Y1)",
                    option="target", value=self.spec(), expected=f"a detection scoring >= {self.min_score:g}",
                )  # fmt: skip
            chosen = chosen[torch.argsort(found.scores[chosen], descending=True, stable=True)]
            boxes, classes = found.boxes[chosen], found.labels[chosen]
            scored = found.scores[chosen].tolist()
        else:
            b = torch.tensor([_in_input(self.xyxy, clean, size)], dtype=torch.float64)
            if self.cls is not None:
                classes = torch.tensor([float(self._class(clean))], dtype=torch.float64)
            else:
                match = iou(b, found.boxes)[0] * found.scores if len(found.scores) else torch.zeros(0)
                if len(match) == 0 or float(match.max()) <= 0:
                    raise ConfigError(
                        f"{option('target')} {self.spec()}: no detection on the clean image overlaps the box, so "
                        f"it has no class; give its class (box:X0,Y0,X1,Y1:CLASS)",
                        option="target", value=self.spec(), expected="a class for the box",
                    )  # fmt: skip
                classes = found.labels[int(match.argmax())].reshape(1)
            boxes, scored = b, [None]
        classes_long = classes.to(torch.float64)

        def score(raw, n: int) -> np.ndarray:
            out = np.empty((n, len(boxes)))
            for j, d in enumerate(_detections(raw, n)):
                out[j] = torch.log(box_scores(d, boxes, classes_long).clamp(min=EPSILON)).numpy()
            return out

        kinds = [int(c) for c in classes.tolist()]
        names = _unique([f"{_name(k, clean)} {_xyxy(b)}" for k, b in zip(kinds, boxes.tolist(), strict=True)])
        info = tuple({"class": k, "class_name": _name(k, clean), "box": [round(v, 3) for v in b],
                      "clean_score": None if s is None else float(s)}
                     for k, b, s in zip(kinds, boxes.tolist(), scored, strict=True))  # fmt: skip
        arrays = {"boxes": boxes.numpy().astype(np.float32)}
        return Bound(names, score, kind="box", info=info, arrays=arrays)

    def _class(self, clean: Clean) -> int:
        out = _unwrapped(clean.output)  # a tensor's classes are its columns after 4 + 1; a list's, its names
        count = out.shape[2] - 5 if isinstance(out, torch.Tensor) else len(clean.names) if clean.names else None
        return check_class(self.cls, count, option("target") + " box's class", clean.names or None)

    def spec(self) -> str:
        parts = ["box"]
        if self.xyxy is not None or self.cls is not None:
            parts.append("" if self.xyxy is None else ",".join(f"{v:g}" for v in self.xyxy))
        if self.cls is not None:
            parts.append(str(self.cls))
        text = ":".join(parts)
        if self.xyxy is not None or self.min_score == 0.5:  # min_score chooses the clean detections only
            return text
        return f"{text}{'' if len(parts) > 1 else ':'}@{self.min_score:g}"


def _xyxy(b) -> str:
    return "[" + ",".join(f"{v:.0f}" for v in b) + "]"


def _input_size(clean: Clean) -> tuple[int, int]:
    """The model input's height and width (what the detector saw): the clean pass's image."""
    return clean.size if clean.size is not None else (clean.given if clean.given is not None else (0, 0))


def floored(bound: Bound, occluded: np.ndarray) -> float:
    """The share of a box target's occluded scores sitting on the floor ``log ε`` (0 for other kinds):
    ``occluded`` holds the sub-targets' rows first."""
    if bound.kind != "box" or occluded.size == 0:
        return 0.0
    return float(np.mean(occluded[: len(bound.names)] <= np.log(EPSILON) + 1e-9))


def box(xyxy=None, cls: int | str | None = None, min_score: float = 0.5) -> BoxTarget:
    """A detector's target: ``s = log max(ε, max_d IoU(b, d) · score_d)`` (see :class:`BoxTarget`)."""
    return BoxTarget(xyxy, cls, min_score)


def _parse_box(args: str) -> BoxTarget:
    grammar = "box, box:X0,Y0,X1,Y1 or box:X0,Y0,X1,Y1:CLASS (a box in the image's pixels), with @MIN_SCORE"
    text, at, floor = args.rpartition("@") if "@" in args else (args, "", "")
    try:
        min_score = float(floor) if at else 0.5
    except ValueError:
        raise _bad_spelling("box", args, grammar) from None
    coords, _, cls = text.partition(":")
    xyxy = None
    if coords.strip():
        try:
            xyxy = tuple(float(v) for v in coords.split(","))
        except ValueError:
            raise _bad_spelling("box", args, grammar) from None
        if len(xyxy) != 4:
            raise _bad_spelling("box", args, grammar)
    return BoxTarget(xyxy, _index_or_name(cls), min_score)


register("box", _parse_box)
