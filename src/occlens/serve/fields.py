"""A request's form fields as the library's values: :func:`settings_from_form` turns them into the
:class:`~occlens.core.settings.Settings` and :class:`~occlens.app.options.Options` of the work asked for;
the smaller readers parse one field each (a window, a number, a box, a true label)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from starlette.datastructures import FormData

from ..app.options import Options
from ..core.errors import flag
from ..core.grid import pair
from ..core.scoring import check_class, check_truth, split_labels
from ..core.settings import Settings
from .errors import RequestError
from .uploads import text_field
from .viewer import Viewer

EXPLAIN_FIELDS = ("image", "key", "label", "target", "patch", "stride", "fill", "seed", "engine")
OCCLUDE_FIELDS = ("image", "key", "label", "target", "box", "mask", "fill", "seed")
SALIENCY_FIELDS = ("image", "key", "label", "target")
FIELDS = frozenset(EXPLAIN_FIELDS + OCCLUDE_FIELDS + SALIENCY_FIELDS)
RUN_SETTINGS = ("patch", "stride", "fill", "seed")  # what a run's image is explained with live, unless asked


def http_name(name: str) -> str:
    """Option ``name`` as the HTTP API names it (the ``spell`` of :meth:`OcclensError.render`): a form field by
    its name; any other is the server's, set when it starts: ``max_pixels`` -> ``occlens serve --max-pixels``."""
    return name if name in FIELDS else f"occlens serve {flag(name)}"


def settings_from_form(
    form: FormData, viewer: Viewer, label: int | tuple | None = None, run_options: Mapping | None = None
) -> tuple[Settings, Options]:
    """The settings and options a request asks for.

    Settings: the viewer's defaults (for the model's window); for a run's image (field ``key``) the run's own
    patch, stride, fill and seed (``run_options``, as the run recorded them) on top; then the form's
    ``patch``, ``stride`` (a patch given without a stride: stride = patch), ``fill``, ``seed`` and ``engine``.
    Options: the viewer's, with the form's ``target``: empty or ``Q`` the prediction, ``K`` the true class
    (``label``), else a class name or index."""
    base = viewer.settings.for_model(viewer.model.patch)
    if run_options and text_field(form, "key") is not None:
        chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in run_options.items() if k in RUN_SETTINGS}
        base = replace(base, **chosen)
    patch = number_pair(form, "patch")
    stride = number_pair(form, "stride")
    engine = text_field(form, "engine")
    patch_given = patch is not None
    patch = base.patch if patch is None else patch
    stride = stride if stride is not None else (patch if patch_given else base.stride)
    settings = replace(  # validated again (Settings.__post_init__)
        base,
        patch=patch,
        stride=stride,
        fill=text_field(form, "fill") or base.fill,
        seed=whole(form, "seed", base.seed),
        engine=engine or base.engine,
    )
    target = target_class(text_field(form, "target"), label, viewer.model.labels, "target")
    return settings, replace(viewer.options, target=target)


def number_pair(form: FormData, name: str) -> tuple[int, int] | None:
    """Field ``name`` as a window size in pixels: ``N`` or ``H,W`` (or ``HxW``); None when absent."""
    text = text_field(form, name)
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):
        raise RequestError(f"{name} must be N or H,W (whole numbers of pixels), got {text!r}")
    return pair(tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0]), name)


def whole(form: FormData, name: str, default: int) -> int:
    """Field ``name`` as a whole number >= 0, ``default`` when absent."""
    text = text_field(form, name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]+", text):
        raise RequestError(f"{name} must be a whole number >= 0, got {text!r}")
    return int(text)


def target_class(text: str | None, label: int | tuple | None, names, field: str) -> int | None:
    """``target``: empty or ``Q`` is the prediction (None), ``K`` the true class (one of a multi-label truth's,
    when it has one), else a class name or index."""
    if text is None or (text == "Q" and "Q" not in names):
        return None
    if text == "K" and "K" not in names:
        if label is None:
            raise RequestError(f"{field}=K is the true class, and none is known; give label (the true class) too")
        if isinstance(label, tuple) and len(label) > 1:
            said = ", ".join(names[c] if 0 <= c < len(names) else str(c) for c in label)
            raise RequestError(
                f"{field}=K is ambiguous: the image has {len(label)} true labels ({said}); give one by name"
            )
        return label[0] if isinstance(label, tuple) else label
    return check_class(text, None, field, names)


def truth_of(text: str, names) -> int | tuple:
    """The ``label`` field: one class, or several separated by ``;`` (a multi-label truth, as in a run's CSV)."""
    return check_truth(split_labels(text), None, "label", names)


def box_of(form: FormData, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The ``box`` field: left,top,right,bottom in pixels of the model's input; None when absent."""
    text = text_field(form, "box")
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"\s*-?[0-9]+\s*", p) for p in parts):
        raise RequestError(f"box must be left,top,right,bottom in pixels of the {width}x{height} image, got {text!r}")
    return tuple(int(p) for p in parts)
