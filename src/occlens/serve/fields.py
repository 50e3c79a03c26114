"""A request's form fields as the library's values: :func:`settings_from_form` turns them into the
:class:`~occlens.core.settings.Settings` and :class:`~occlens.app.options.Options` of the work asked for;
the smaller readers parse one field each (a window, a number, a box, a true label)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from starlette.datastructures import FormData

from ..app.options import Options
from ..core.checks import band_window, is_bands
from ..core.declare import declarations
from ..core.errors import ConfigError, flag, shown
from ..core.scoring import check_truth, split_labels
from ..core.settings import Settings
from ..core.targets import resolve_target
from .errors import RequestError
from .uploads import text_field
from .viewer import Viewer, takes_volumes

EXPLAIN_FIELDS = ("image", "key", "label", "target", "patch", "stride", "fill", "seed", "engine")
OCCLUDE_FIELDS = ("image", "key", "label", "target", "box", "mask", "fill", "seed")
SALIENCY_FIELDS = ("image", "key", "label", "target")
FIELDS = frozenset(EXPLAIN_FIELDS + OCCLUDE_FIELDS + SALIENCY_FIELDS)
RUN_SETTINGS = ("patch", "stride", "fill", "seed")  # what a run's image is explained with live, unless asked


def http_name(name: str) -> str:
    """Option ``name`` as the HTTP API names it (the ``spell`` of :meth:`OcclensError.render`): a form field by
    its name; any other is the server's, set when it starts: ``max_pixels`` -> ``occlens serve --max-pixels``."""
    return name if name in FIELDS else f"occlens serve {flag(name)}"


SETTING_FIELDS = ("patch", "stride", "fill", "seed", "engine")  # the Settings a request may set
DECLARED = {d.name: d for d in declarations(Settings) if d.name in SETTING_FIELDS}  # their declarations (core)


def settings_from_form(
    form: FormData, viewer: Viewer, label: int | tuple | None = None, run_options: Mapping | None = None
) -> tuple[Settings, Options]:
    """The settings and options a request asks for.

    Settings: the viewer's defaults (for the model's window); for a run's image (field ``key``) the run's own
    patch, stride, fill and seed (``run_options``, as the run recorded them) on top; then the form's
    :data:`SETTING_FIELDS`, each read as its declaration says (a patch given without a stride: stride =
    patch) and checked once, when the settings are built. Options: the viewer's, with the form's ``target``:
    empty or ``Q`` the prediction, ``K`` the true class (``label``), else a class name or index."""
    base = viewer.settings.for_model(viewer.model.patch)
    if run_options and text_field(form, "key") is not None:
        chosen: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in run_options.items() if k in RUN_SETTINGS
        }
        base = replace(base, **chosen)
    given = {name: value for name in SETTING_FIELDS if (value := setting_field(form, name)) is not None}
    if "patch" in given and "stride" not in given:
        given["stride"] = band_window(given["patch"]) or given["patch"]
    settings = replace(base, **given)  # checked here (Settings.__post_init__), once
    if is_bands(settings.patch):  # the viewer draws maps of windows: of a photo's, or of a volume's
        raise ConfigError(f"patch {shown(form.get('patch'))} is band occlusion, which the viewer does not draw yet; "
                          f"give N or H,W here (D,H,W for a volume model), or use occlens explain", option="patch",
                          value=form.get("patch"), expected="N or H,W")  # fmt: skip
    if len(settings.patch or ()) == 3 and not takes_volumes(viewer.model):
        raise ConfigError(f"patch {shown(form.get('patch'))} is a volume's window, and this server's model takes 2-D "
                          f"images; give N or H,W", option="patch", value=form.get("patch"),
                          expected="N or H,W")  # fmt: skip
    target = target_class(text_field(form, "target"), label, viewer.model.labels, "target")
    return settings, replace(viewer.options, target=target)


def setting_field(form: FormData, name: str) -> Any:
    """Field ``name`` as its declaration parses it (its check runs when the settings are built); None when
    absent."""
    text = text_field(form, name)
    d = DECLARED[name]
    if text is None or d.parse is None:
        return text
    try:
        return d.parse(text.strip())
    except ValueError:
        expected = d.metavar.replace("|", " or ") if d.metavar else f"a number ({d.parse.__name__})"
        raise RequestError(f"{name} must be {expected}, got {text[:40]!r}{'...' if len(text) > 40 else ''}") from None


def target_class(text: str | None, label: int | tuple | None, names: Sequence[str], field: str) -> object:
    """``target``: empty or ``Q`` is the prediction (None), ``K`` the true class (one of a multi-label truth's,
    when it has one), else a class name or index, or a target spelled ``KIND:ARGS`` (:mod:`occlens.core.targets`),
    as ``occlens explain --target`` takes it."""
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
    return resolve_target(text, names)  # a class (index or name), or a registered KIND:ARGS target


def one_class(form: FormData, options: Options, what: str) -> int | None:
    """The class an answer about one class (``what``: occlude, saliency) explains: None for the prediction Q, else
    the class of the form's ``target``; a target of another kind (``KIND:ARGS``) is refused."""
    target = options.target
    if target is None or isinstance(target, int):
        return target
    raise RequestError(f"{what} answers for one class: target must be Q, K, a class index or a class name, got "
                       f"{text_field(form, 'target')!r}")  # fmt: skip


def truth_of(text: str, names: Sequence[str]) -> int | tuple:
    """The ``label`` field: one class, or several separated by ``;`` (a multi-label truth, as in a run's CSV)."""
    truth: int | tuple = check_truth(split_labels(text), None, "label", names)
    return truth


def box_of(form: FormData, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The ``box`` field: left,top,right,bottom in pixels of the model's input; None when absent."""
    text = text_field(form, "box")
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"\s*-?[0-9]{1,18}\s*", p) for p in parts):  # pixels, not 4,000 digits
        raise RequestError(f"box must be left,top,right,bottom in pixels of the {width}x{height} image, got {text!r}")
    left, top, right, bottom = (int(p) for p in parts)
    return left, top, right, bottom
