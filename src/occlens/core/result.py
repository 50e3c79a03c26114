"""OcclusionResult: everything one explanation computed, frozen, with save/load (.npz + .json).

Two forms on disk, both read by :meth:`OcclusionResult.load` into the same result: the *full* form
(``occlens explain``; float64 arrays, pixel maps, every grid in the JSON) and the *compact* form of
dataset runs (``save(..., compact=True)``: float32 δL grids, float16 ``all_delta``; the occluded losses
and pixel maps, which follow from δL, the loss and the grid, are derived when read; the JSON keeps
the summary and the δL grids at 7 significant digits).

**Targets beyond a class** (:mod:`occlens.core.targets`; the one definition, for every kind but a class):

* A target explains T >= 1 named *sub-targets* from the same forward passes (a segment per predicted class,
  a box per detection...). ``target_maps`` holds one :class:`ClassMap` per sub-target, in order (``cls``: its
  name); ``target_map`` is the first (what ``delta``, ``pixel_map``, ``loss`` read, and what ``fast`` and
  ``budget`` steer by). ``deltas``, ``occluded_losses`` (T x R x C) and ``pixel_maps`` (T x H x W) stack them:
  **sub-targets first, then the window grid**. ``sub_targets``: their names; ``target_info``: one dict per
  sub-target saying what it is (a segment's class and pixel count, a margin's q and k, a box...).
* ``target_kind``: ``"class"`` (a class; the prediction by default), ``"margin"``, ``"regression"``,
  ``"segment"``, ``"box"``, ``"callable"``, or a registered kind's. ``target``: a class's index, else the
  target's spelling (``"segment:person"``), which :func:`occlens.core.targets.parse_target` reads back.
* ``loss``: ``L = -s`` of the first sub-target on the clean image: ``-log P(y=c)`` for a class, the region's
  mean cross-entropy for a segment, ``-y_j`` for a regression, ``log P(k) - log P(q)`` for a margin,
  ``-log max(ε, max_d IoU(b, d) · score_d)`` for a box (ε = ``occlens.core.targets.EPSILON``, 1e-6).
* A box's ``target_info``: ``{"class", "class_name", "box": [x0, y0, x1, y1] in the model input's pixels,
  "clean_score": the clean detection's score (None for a box given)}``; sub-targets in order of clean score.
* ``predicted`` (Q), ``probabilities`` and ``top_k()`` describe the model's classes whenever it returns class
  scores (an N x classes tensor under its head: a classifier, whatever its target, a margin's or a regression's
  too); for a model that does not (a segmenter, a detector) they are None, None and ``[]``.
* ``label`` K is a class: accepted only from a model that returns class scores (refused in one line
  otherwise); ``correct`` is K == Q then, else None; ``label_map`` is K's map beside the target's (a margin's
  too) when K is not the target itself, else None.
* On disk (format version 3, both forms; ``"form"``: ``"full"`` or ``"compact"``): the JSON has
  ``"target_kind"`` and ``"targets"``, one object per sub-target in order, ``{"name", "loss", "delta",
  ("occluded_loss",) ...its target_info}``; ``"probability"`` is P(target) for a class target, else null;
  ``"predicted"`` and ``"top_k"`` are null and ``[]`` without class scores. The npz has ``targets_delta``,
  ``targets_occluded_loss`` (T x R x C) and ``targets_pixel_map`` (T x H x W) for every kind but a class
  (the compact form: ``targets_delta`` alone, float32), what the target's figure draws prefixed ``target_``
  (a segment's ``target_segmentation``, h x w int32, and ``target_regions``, T x h x w bool; a box's
  ``target_boxes``, T x 4 float32, x0 y0 x1 y1 in the model input's pixels), and no
  ``probabilities`` without class scores. The first sub-target's map is also the top-level ``delta``,
  ``loss``, ``occluded_loss`` and ``pixel_map``, as a class's always was. Files of versions 1 (full) and 2
  (compact) load unchanged: a class target's result.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ConfigError, OcclensError, describe, option, public, shown
from .files import atomic_write
from .grid import Grid, grid_from_json
from .settings import Settings

FORMAT = "occlens-result"
FORMAT_VERSION = 3  # both forms, with "form": "full" or "compact" (targets beyond a class: sub-target maps)
OLD_FULL, OLD_COMPACT = 1, 2  # before version 3 the version said the form: 1 full, 2 compact
DIGITS = 7  # significant digits of the δL grids in a compact JSON (float32 holds about 7)
SIGN = (
    "negative delta: occluding the window raised the loss, so the region supported the class; "
    "positive: it argued against it"
)


def frozen_array(a, dtype=np.float64) -> np.ndarray:
    """A read-only copy of ``a`` (float64 unless ``dtype`` says otherwise)."""
    a = np.array(a, dtype=dtype)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class ClassMap:
    """The occlusion map of one class ``k``: ``δL_i = L - L_occl_i`` with ``L = -log P(y=k | x)``; or of
    another kind of target's sub-target (``cls`` its name): ``L = -s``, its score negated."""

    cls: int | str
    loss: float
    occluded_loss: np.ndarray  # R x C: -log P(y=k | x_occl_i), raster order
    delta: np.ndarray  # R x C: loss - occluded_loss
    pixel_map: np.ndarray  # H x W: mean delta over the windows covering each pixel

    @classmethod
    def compute(cls, k: int | str, log_prob: float, occluded_log_probs: np.ndarray, grid: Grid) -> ClassMap:
        """The map of class ``k`` from its clean log-probability and its R*C occluded ones (or of a sub-target
        ``k``, by name, from its clean and occluded scores)."""
        loss = -float(log_prob)
        occluded = -np.asarray(occluded_log_probs, dtype=np.float64).reshape(grid.shape)  # R x C; a volume's Dw x R x C
        delta = loss - occluded
        return cls(
            k if isinstance(k, str) else int(k),
            loss,
            frozen_array(occluded),
            frozen_array(delta),
            frozen_array(grid.pixel_map(delta)),
        )


@dataclass(frozen=True)
class OcclusionResult:
    """The result of :func:`occlens.explain`.

    ``delta`` (R x C) is the seed's occlusion loss map for the explained class
    (``target``, by default the prediction Q); ``pixel_map`` (H x W) spreads it over
    the pixels. Negative values mark regions that *supported* the class (occluding
    them raised its loss), positive values regions that argued against it.
    When the true ``label`` K was given and differs from the target, ``label_map``
    holds the same map for K, computed from the same forward passes.
    """

    predicted: int | None  # Q; None when the model returns no class scores (a segmenter, a detector)
    label: int | None
    target: int | str  # the class explained; another kind of target: its spelling (occlens.core.targets)
    probabilities: np.ndarray | None  # of every class; None when the model returns no class scores
    grid: Grid
    settings: Settings
    target_map: ClassMap
    label_map: ClassMap | None = None
    device: str = "cpu"
    batch_size: int = 1
    engine: str = "dense"
    seconds: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    # a multi-label truth (sigmoid heads): the true labels and their maps, from the same forward passes
    true_labels: tuple[int, ...] | None = None
    true_maps: tuple[ClassMap, ...] = ()
    # what explain saw, for plot() and the notebook's picture; not saved (a loaded result has neither)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)  # H x W x C float32 in [0, 1]
    labels: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # the model's class names
    # all_classes=True: every class's δL (classes x R x C, float32) and the top class of each occluded copy (R x C)
    all_delta: np.ndarray | None = field(default=None, repr=False, compare=False)
    flip_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    # the target's sub-targets (the module's docstring): their maps (the first is target_map), kind and what they are
    target_maps: tuple[ClassMap, ...] = ()
    target_kind: str = "class"
    target_info: tuple[Mapping[str, Any], ...] = ()
    target_arrays: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    # a volume's small copy (occlens.core.volume.volume_preview: at most 64 voxels an axis, uint8), saved in the npz
    preview: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.target_maps:
            object.__setattr__(self, "target_maps", (self.target_map,))

    def __repr__(self) -> str:
        known = {self.label: self.meta.get("label_name"), self.target: self.meta.get("target_name"),
                 self.predicted: self.meta.get("predicted_name")}  # fmt: skip

        def cls(k: int) -> str:
            name = self.labels[k] if self.labels is not None else known.get(k)
            return f"{k} {name!r}" if name is not None else str(k)

        g, d = self.grid, self.delta
        verdict = {True: " (correct)", False: " (wrong)", None: ""}[self.correct]
        parts = []
        if self.predicted is not None:
            parts.append(f"Q={cls(self.predicted)} p={float(self.probabilities[self.predicted]):.3f}")
        if self.label is not None:
            parts.append(f"K={cls(self.label)}{verdict}")
        if len(self.target_maps) > 1:
            more = ", ..." if len(self.target_maps) > 4 else ""
            parts.append(f"explained target {self.target!r}: {len(self.target_maps)} sub-targets "
                         f"({', '.join(self.sub_targets[:4])}{more})")  # fmt: skip
        elif isinstance(self.target, str):
            parts.append(f"explained target {self.target!r}")
        elif self.target != self.predicted:
            parts.append(f"explained class {cls(self.target)}")
        parts += [
            f"L={self.loss:.4f}",
            _windows(g),
            f"engine {self.engine}",
            f"δL in [{float(d.min()):.4g}, {float(d.max()):.4g}] (negative: the window supported "
            f"{'the class' if self.target_kind == 'class' else 'what is explained'})",
        ]
        return f"OcclusionResult({', '.join(parts)})"

    @public
    def plot(self, image=None, **options):
        """The figure of this result (:func:`occlens.plot`): ``image`` defaults to the one explained
        (a result read with :meth:`load` needs it passed); ``options`` go to :func:`occlens.plot`
        (``labels``, ``ax``, ``true_class``, ``saliency``)."""
        from ..present.figure import plot  # drawing is the present layer's: loaded only when asked for

        if not isinstance(self.grid, Grid):  # a volume's slices (over ``image``, else its preview); bands: bars
            if image is None and self.preview is not None:
                from .volume import preview_at

                image = preview_at(self.preview, self.grid.image_shape)
            return plot(self, image, **options)
        if image is None and self.image is None:
            raise OcclensError(
                "this result does not hold its image (it was read from disk); pass it: "
                "result.plot(image), the image as it was explained",
                option="image", value=None, expected="the image explained", fix="result.plot(image)",
            )  # fmt: skip
        options.setdefault("labels", self.labels)
        return plot(self, self.image if image is None else image, **options)

    @public
    def to_nifti(self, path: str | os.PathLike, affine=None, sub_target: int = 0) -> Path:
        """Write this volume's voxel map (``pixel_maps[sub_target]``, D x H x W, float32) as a NIfTI file at ``path``
        (``.nii`` or ``.nii.gz``) on the input's grid: the affine recorded in ``meta["input"]`` (or ``affine``), as
        :func:`occlens.read_volume` reads it back. Needs nibabel (``pip install 'occlens[medical]'``). Returns the
        path written (atomically)."""
        from .grid import VolumeGrid
        from .medical import write_nifti

        if not isinstance(self.grid, VolumeGrid):
            raise ConfigError("to_nifti writes a volume's voxel map; this result is of a 2-D image or of band "
                              "occlusion", option="result", value=type(self.grid).__name__)  # fmt: skip
        subs = len(self.target_maps)
        index = isinstance(sub_target, (int, np.integer)) and not isinstance(sub_target, bool)
        if not index or not -subs <= sub_target < subs:
            raise ConfigError(f"sub_target must be an index of one of the result's {subs} sub-target(s), got "
                              f"{shown(sub_target)}", option="sub_target", value=sub_target)  # fmt: skip
        record = self.meta.get("input") or {}
        a = np.asarray(affine if affine is not None else record.get("affine", np.eye(4)), dtype=np.float64)
        if a.shape != (4, 4):
            raise ConfigError(f"affine must be 4 x 4, got shape {a.shape}", option="affine", value=affine)
        return write_nifti(self.pixel_maps[sub_target], a, path, "occlens voxel map: negative = supported")

    def _repr_png_(self) -> bytes | None:
        """The figure, for notebooks (IPython calls this), as compact as :meth:`plot`'s figure shows itself;
        None when the result holds no image."""
        if self.image is None:
            return None
        from ..present.figure import inline_png

        return inline_png(self.plot())

    @property
    def correct(self) -> bool | None:
        """``K == Q`` when the true label was given; with several true labels, whether the model predicts
        exactly them (:attr:`predicted_labels`); else None."""
        if self.true_labels is not None:
            return set(self.predicted_labels) == set(self.true_labels)
        return None if self.label is None else self.label == self.predicted

    @property
    def predicted_labels(self) -> tuple[int, ...]:
        """What the model predicts: with a sigmoid head every class above ``settings.threshold``; else (Q,)."""
        if self.predicted is None:
            return ()
        if self.settings.output != "sigmoid":
            return (self.predicted,)
        return tuple(int(c) for c in np.flatnonzero(self.probabilities > self.settings.threshold))

    def verdicts(self) -> list[tuple[int, float, bool]]:
        """Per true label of a multi-label truth: ``(class, P(class), predicted)`` (above the threshold)."""
        t = self.settings.threshold
        return [(c, float(self.probabilities[c]), bool(self.probabilities[c] > t)) for c in self.true_labels or ()]

    @property
    def loss(self) -> float:
        """``L_nooccl = -log P(y=target | x)`` on the unoccluded image."""
        return self.target_map.loss

    @property
    def occluded_loss(self) -> np.ndarray:
        return self.target_map.occluded_loss

    @property
    def delta(self) -> np.ndarray:
        return self.target_map.delta

    @property
    def pixel_map(self) -> np.ndarray:
        return self.target_map.pixel_map

    @property
    def sub_targets(self) -> tuple[str, ...]:
        """The names of the target's sub-targets, in the order of :attr:`target_maps` (a class: its index, as text)."""
        return tuple(str(m.cls) for m in self.target_maps)

    @property
    def deltas(self) -> np.ndarray:
        """T x R x C: every sub-target's δL grid, sub-targets first (T = 1 for a class)."""
        return np.stack([m.delta for m in self.target_maps])

    @property
    def occluded_losses(self) -> np.ndarray:
        """T x R x C: every sub-target's occluded losses."""
        return np.stack([m.occluded_loss for m in self.target_maps])

    @property
    def pixel_maps(self) -> np.ndarray:
        """T x H x W: every sub-target's pixel map."""
        return np.stack([m.pixel_map for m in self.target_maps])

    @property
    def windows(self) -> int:
        """The number of windows (occluded forward passes)."""
        return self.grid.size

    @property
    def flips(self) -> int | None:
        """How many windows, occluded, change the prediction (with ``all_classes=True``; else None)."""
        return None if self.flip_map is None else int((self.flip_map != self.predicted).sum())

    @public
    def instead(self, k: int = 5) -> list[tuple[int, int]]:
        """The (at most ``k``) classes the model says instead where occluding a window changes its prediction,
        as ``(class, windows)``, most windows first; ``[]`` when no window changes it. Needs a result
        explained with ``all_classes=True`` (an :class:`OcclensError` says so otherwise)."""
        k = _count(k, "k")
        if self.flip_map is None:
            raise OcclensError(
                f"instead() needs what the model says on every occluded copy, which this result was not explained "
                f"with; explain with {option('all_classes')}=True (no extra forward passes)",
                option="all_classes", value=False, expected="a result explained with all_classes=True",
                fix="explain with all_classes=True",
            )  # fmt: skip
        classes, counts = np.unique(self.flip_map[self.flip_map != self.predicted], return_counts=True)
        order = np.lexsort((classes, -counts))[:k]
        return [(int(classes[i]), int(counts[i])) for i in order]

    @public
    def top_k(self, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` most probable classes of the unoccluded image as ``(class, probability)``."""
        k = _count(k, "k")
        if self.probabilities is None:
            return []
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(c), float(self.probabilities[c])) for c in order]

    def with_meta(self, **meta: Any) -> OcclusionResult:
        """A copy with extra JSON-serialisable information (model name, image path, ...) in ``meta``."""
        return replace(self, meta={**self.meta, **meta})

    def to_dict(self, compact: bool = False) -> dict:
        """The JSON-able summary: every field, the R x C maps as nested lists (pixel maps stay in the npz).

        ``compact``: the δL grids only, at :data:`DIGITS` significant digits (no occluded losses)."""

        def grids(m: ClassMap) -> dict[str, Any]:
            if compact:
                return {"delta": _rounded(m.delta)}
            return {"occluded_loss": m.occluded_loss.tolist(), "delta": m.delta.tolist()}

        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "form": "compact" if compact else "full",
            "predicted": self.predicted,
            "label": self.label,
            "correct": self.correct,
            "target": self.target,
            "target_kind": self.target_kind,
            "probability": float(self.probabilities[self.target])
            if isinstance(self.target, int) and self.probabilities is not None
            else None,
            "loss": self.loss,
            "top_k": [[c, p] for c, p in self.top_k(5)],
            "sign": SIGN,
            "grid": self.grid.to_json(),  # a volume's has a depth, band occlusion's its bands (occlens.volumes)
            "settings": self.settings.to_dict(),
            "device": self.device,
            "batch_size": self.batch_size,
            "engine": self.engine,
            "seconds": self.seconds,
            "meta": dict(self.meta),
            **grids(self.target_map),
            "label_map": None,
        }
        if self.target_kind != "class":
            info = self.target_info or ({},) * len(self.target_maps)
            d["targets"] = [{"name": str(m.cls), "loss": m.loss, **grids(m), **i}
                            for m, i in zip(self.target_maps, info, strict=True)]  # fmt: skip
        if self.true_labels is not None:
            d["true_labels"] = list(self.true_labels)
            d["threshold"] = self.settings.threshold
            d["verdicts"] = [{"class": c, "probability": p, "predicted": v} for c, p, v in self.verdicts()]
            d["true_maps"] = [{"class": m.cls, "loss": m.loss, **grids(m)} for m in self.true_maps]
        if self.flip_map is not None:  # the arrays are in the npz; the classes taking over, named
            names = self.labels
            d["all_classes"] = {
                "flips": self.flips,
                "windows": self.windows,
                "instead": [{"class": c, "name": None if names is None else names[c], "windows": n}
                            for c, n in self.instead()],
            }  # fmt: skip
        if self.label_map is not None:
            d["label_map"] = {"class": self.label_map.cls, "loss": self.label_map.loss, **grids(self.label_map)}
        return d

    @public
    def save(self, path: str | os.PathLike, compact: bool = False) -> tuple[Path, Path]:
        """Write ``PATH.npz`` (arrays) and ``PATH.json`` (everything else), each atomically.

        A ``.npz`` or ``.json`` suffix on ``path`` is dropped first. Returns both paths. ``compact``: the
        dataset runs' form (float32 δL grids and probabilities, float16 ``all_delta``, no occluded losses
        or pixel maps, which :meth:`load` derives; a JSON without indentation or occluded-loss grids).
        """
        stem = _stem(path)
        if not stem.parent.is_dir():
            missing = not stem.parent.exists()
            what = "does not exist" if missing else "is a file"
            fix = f"os.makedirs({str(stem.parent)!r}, exist_ok=True)" if missing else "give a path inside a folder"
            raise OcclensError(
                f"cannot save to path={str(path)!r}: its folder {stem.parent} {what}; "
                f"{'make it first: ' if missing else ''}{fix}",
                option="path", value=str(path), expected="a path in an existing folder", fix=fix,
            )  # fmt: skip
        real = np.float32 if compact else np.float64
        arrays = {} if self.probabilities is None else {"probabilities": self.probabilities.astype(real)}
        maps = [("", self.target_map), ("label_", self.label_map)]
        maps += [(f"true{i}_", m) for i, m in enumerate(self.true_maps)]
        for prefix, m in maps:
            if m is not None and compact:
                arrays[f"{prefix}delta"] = m.delta.astype(np.float32)
            elif m is not None:
                arrays |= {
                    f"{prefix}occluded_loss": m.occluded_loss,
                    f"{prefix}delta": m.delta,
                    f"{prefix}pixel_map": m.pixel_map,
                }
        if self.target_kind != "class":  # every sub-target, sub-targets first
            arrays["targets_delta"] = self.deltas.astype(np.float32) if compact else self.deltas
            if not compact:
                arrays |= {"targets_occluded_loss": self.occluded_losses, "targets_pixel_map": self.pixel_maps}
            arrays |= {f"target_{k}": v for k, v in self.target_arrays.items()}
        if self.all_delta is not None:
            small = self.probabilities is not None and self.probabilities.size <= 1 << 15
            flips = self.flip_map.astype(np.int16) if compact and small else self.flip_map
            arrays |= {"all_delta": self.all_delta.astype(np.float16) if compact else self.all_delta, "flip_map": flips}
        if self.preview is not None:
            arrays["preview"] = np.asarray(self.preview, dtype=np.uint8)
        if compact:
            text = json.dumps(self.to_dict(compact=True), separators=(",", ":"), allow_nan=False)
        else:
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        npz, js = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")
        for file, write in ((npz, lambda f: write_npz(f, arrays)), (js, lambda f: f.write(text.encode() + b"\n"))):
            try:
                atomic_write(file, write)
            except OSError as err:  # it names the hidden temporary file: name the one asked for
                raise OcclensError(f"cannot write {file}: {err.strerror or err}", option="path", value=str(path),
                                   fix="save to a folder you can write to") from None  # fmt: skip
        return npz, js

    @classmethod
    @public
    def load(cls, path: str | os.PathLike) -> OcclusionResult:
        """Read a result written by :meth:`save` (give the stem, the ``.npz`` or the ``.json``)."""
        stem = _stem(path)
        js, npz = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
        try:
            d = json.loads(js.read_text())
            with np.load(npz) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            fix = "give the path that result.save() wrote to"
            raise OcclensError(f"cannot read an occlens result at path={str(path)!r} ({stem}.json and "
                               f".npz): {describe(err) if isinstance(err, OSError) else err}; {fix}", option="path",
                               value=str(path), fix=fix) from None  # fmt: skip
        if d.get("format") != FORMAT:
            raise OcclensError(f"{js} is not an occlens result file (format {d.get('format')!r})")
        if d.get("format_version", OLD_FULL) > FORMAT_VERSION:
            raise OcclensError(
                f"{js} has result format {d['format_version']}, made by a newer occlens; this one reads up to "
                f"{FORMAT_VERSION}: upgrade occlens"
            )
        g = d["grid"]
        grid = grid_from_json(g)

        def class_map(k: int, loss: float, prefix: str) -> ClassMap:
            delta = frozen_array(arrays[f"{prefix}delta"])
            occluded = arrays.get(f"{prefix}occluded_loss")  # the compact form derives these two
            pixels = arrays.get(f"{prefix}pixel_map")
            return ClassMap(
                k,
                loss,
                frozen_array(loss - delta if occluded is None else occluded),
                delta,
                frozen_array(grid.pixel_map(delta) if pixels is None else pixels),
            )

        lm, trues = d["label_map"], d.get("true_maps", [])
        subs = d.get("targets")  # version 3, a target beyond a class: its sub-targets' maps, stacked in the npz
        maps = () if subs is None else tuple(
            ClassMap(
                m["name"], m["loss"],
                frozen_array(m["loss"] - arrays["targets_delta"][t] if "targets_occluded_loss" not in arrays
                             else arrays["targets_occluded_loss"][t]),
                frozen_array(arrays["targets_delta"][t]),
                frozen_array(grid.pixel_map(arrays["targets_delta"][t]) if "targets_pixel_map" not in arrays
                             else arrays["targets_pixel_map"][t]),
            )
            for t, m in enumerate(subs)
        )  # fmt: skip
        info = tuple({k: v for k, v in m.items() if k not in ("name", "loss", "delta", "occluded_loss")}
                     for m in subs or ())  # fmt: skip
        return cls(
            predicted=d["predicted"],
            label=d["label"],
            target=d["target"],
            probabilities=None if "probabilities" not in arrays else frozen_array(arrays["probabilities"]),
            grid=grid,
            settings=Settings.from_dict(d["settings"]),
            target_map=maps[0] if maps else class_map(d["target"], d["loss"], ""),
            label_map=None if lm is None else class_map(lm["class"], lm["loss"], "label_"),
            device=d["device"],
            batch_size=d["batch_size"],
            engine=d["engine"],
            seconds=d["seconds"],
            meta=d["meta"],
            true_labels=None if d.get("true_labels") is None else tuple(d["true_labels"]),
            true_maps=tuple(class_map(m["class"], m["loss"], f"true{i}_") for i, m in enumerate(trues)),
            all_delta=None if "all_delta" not in arrays else frozen_array(arrays["all_delta"], np.float32),
            flip_map=None if "flip_map" not in arrays else frozen_array(arrays["flip_map"], np.int32),
            target_maps=maps,
            target_kind=d.get("target_kind", "class"),
            target_info=info,
            target_arrays={
                k[len("target_") :]: frozen_array(v, v.dtype) for k, v in arrays.items() if k.startswith("target_")
            },  # fmt: skip
            preview=None if "preview" not in arrays else frozen_array(arrays["preview"], np.uint8),
        )


def _rounded(grid: np.ndarray) -> list:
    """An R x C grid (any number of axes) as nested lists of floats at :data:`DIGITS` significant digits."""
    if grid.ndim != 2:
        return [_rounded(part) for part in grid] if grid.ndim > 2 else [float(f"{v:.{DIGITS}g}") for v in grid.tolist()]
    return [[float(f"{v:.{DIGITS}g}") for v in row] for row in grid.tolist()]


def _windows(g) -> str:
    """``RxC windows of PHxPW stride SHxSW on HxW`` (a volume: three values each; band occlusion: the bands)."""
    if not hasattr(g, "patch") or isinstance(g.patch, str):
        return f"{g.size} band windows"
    x = lambda v: "x".join(map(str, v))  # noqa: E731
    if hasattr(g, "bands"):  # band windows: each band group inside each 2-D window
        return (f"{g.shape[0]} bands x {x(g.shape[1:])} windows of {x(g.patch)} stride {x(g.stride)} on "
                f"{x(g.image_shape)}")  # fmt: skip
    return f"{x(g.shape)} windows of {x(g.patch)} stride {x(g.stride)} on {x(g.image_shape)}"


def write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """A compressed ``.npz`` that ``numpy.load`` reads, byte-identical for identical arrays.

    ``numpy.savez_compressed`` stamps the current time into the zip; this writes a fixed one.
    """
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _stem(path: str | os.PathLike) -> Path:
    """``path`` without a ``.npz`` or ``.json`` suffix; a ConfigError for what is no file name."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip() or Path(path).name in ("", ".", ".."):
        got = "an empty string" if isinstance(path, str) and not path.strip() else shown(path)
        fix = "give a file name such as 'out/cat'"
        raise ConfigError(f"path must be a file name (a str or pathlib.Path), got {got}; {fix}",
                          option="path", value=path, expected="a str or os.PathLike", fix=fix)  # fmt: skip
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".npz", ".json") else p


def _count(k, name: str) -> int:
    """``k`` as a number of classes to list: an int >= 0."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"{name} must be an int >= 0 (how many classes to list), got {shown(k)}; e.g. "
                          f"{name}=5", option=name, value=k, expected="an int >= 0", fix=f"{name}=5")  # fmt: skip
    return int(k)
