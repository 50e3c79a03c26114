"""The exceptions occlens raises for bad input: one base class, three kinds.

Every message says what was received, what was expected and how to fix it, in
one line, so the command line can print it as it is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings

_MARK = "\x1e"  # around an option's name in a message: each audience spells it its own way (render)
_OPTION = re.compile(_MARK + r"([A-Za-z_][A-Za-z0-9_]*)" + _MARK)
MISSING = object()  # an error's value when it names none


def option(name: str) -> str:
    """An option's name inside a message, spelled by whoever shows it: ``batch_size`` in Python (``str(err)``),
    ``--batch-size`` on the command line, the form field's name in the HTTP API (:meth:`OcclensError.render`)."""
    return f"{_MARK}{name}{_MARK}"


def flag(name: str) -> str:
    """The command line's spelling of option ``name``: ``--batch-size``."""
    return "--" + name.replace("_", "-")


def either(name: str) -> str:
    """Both spellings, for a message kept where either reader may see it (a run's manifest): ``top_k (--top-k)``."""
    return f"{name} ({flag(name)})"


class OcclensError(Exception):
    """Base class of every error occlens raises on purpose.

    Its message is one line saying what was wrong, the value, what was expected and the fix; the same
    parts are fields for programs: ``option`` (the option at fault, its Python name, or None), ``value``
    (:data:`MISSING` when none), ``expected`` and ``fix`` (or None). Options named in the message
    (:func:`option`) are spelled for the reader by :meth:`render`; ``str(err)`` spells them as Python does.
    """

    def __init__(self, message: str = "", *, option: str | None = None, value=MISSING, expected: str | None = None,
                 fix: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        named = _OPTION.search(message)
        self.option = option if option is not None or named is None else named.group(1)
        self.value, self.expected, self.fix = value, expected, fix

    def render(self, spell=lambda name: name) -> str:
        """The message with each option named as ``spell(name)`` says (e.g. :func:`flag` for the command line)."""
        text = super().__str__()
        return _OPTION.sub(lambda m: spell(m.group(1)), text)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):  # its fields survive a worker process or a Ray task
        fields = {"option": self.option, "value": self.value, "expected": self.expected, "fix": self.fix}
        return _rebuild, (type(self), self.args[0] if self.args else "", fields)


def _rebuild(cls, message: str, fields: dict) -> OcclensError:
    err = cls(message, **{k: v for k, v in fields.items() if k != "value"})
    err.value = fields["value"]
    return err


class ConfigError(OcclensError, ValueError):
    """A setting is invalid: window geometry, fill, output kind, label, target, batch size."""


class UnknownClass(ConfigError):
    """A class name the model does not have (the command line adds how to list the names)."""


class ImageError(OcclensError, ValueError):
    """The image cannot be used: unreadable, wrong shape or channel count, NaN/inf values."""


class TooLarge(ImageError):
    """The image is over a size limit (pixels, bytes, the memory its decoding would take)."""


class ModelError(OcclensError, RuntimeError):
    """The model failed, or returned scores that do not fit what was declared."""


def shown(value, most: int = 60) -> str:
    """``value`` as an error message names it: its repr when short (``None``, ``5``, ``'cat.jpg'``), else its
    type (``a TinyConvNet``: a module's repr is pages long) or its repr cut short."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ is no reason to lose the error
        text = ""
    if text and len(text) <= most and "\n" not in text:
        return text
    if isinstance(value, (str, bytes)):
        return f"{text[: most - 12]}... ({len(value)} characters)"
    kind = type(value).__name__
    return f"an {kind}" if kind[:1].lower() in "aeio" else f"a {kind}"


def public(function):
    """``function`` as users call it: an :class:`OcclensError` it raises ends its traceback at the user's own
    call (this wrapper's line, named after ``function``) instead of 5-10 frames inside occlens, where the
    message says all a user needs; its cause, if it has one (the model's own error), is kept. Other
    exceptions keep every frame. ``OCCLENS_DEBUG=1`` keeps every frame of these too."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OcclensError as err:
            if os.environ.get("OCCLENS_DEBUG"):  # every frame, for whoever debugs occlens
                raise
            # occlens refused the call above: the message below says what was wrong and how to fix it
            raise err.with_traceback(None) from err.__cause__

    names = {"co_name": function.__name__}
    if sys.version_info >= (3, 11):
        names["co_qualname"] = function.__qualname__
    call.__code__ = call.__code__.replace(**names)  # the traceback's last line says "in explain", not "in call"
    call.__occlens_public__ = True
    return call


_INSIDE = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, contextlib.__file__)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message)`` pointed at the line that called into occlens (the first frame outside the
    package and the context managers it opens), however deep inside occlens the warning is raised."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def import_quietly() -> None:
    """Import what occlens's own imports would make warn in a Jupyter kernel, with those warnings ignored, once.

    ``tqdm.auto`` warns (``TqdmWarning: IProgress not found``) the first time it is imported in a kernel
    without ipywidgets; timm imports it, through huggingface_hub, when occlens loads or traces a model, so
    every notebook's first ``load_model()`` or ``explain()`` printed it in red. It is not occlens's to
    say, nor needed: a module caches it, so imported here first it stays quiet for the rest of the session.
    """
    if "ipykernel" not in sys.modules or "tqdm.auto" in sys.modules:
        return
    try:
        from tqdm import TqdmWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmWarning)
            import tqdm.auto  # noqa: F401
    except ImportError:  # no tqdm: nothing will warn
        pass


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes (Ray colours its messages)


def first_line(err: BaseException) -> str:
    """An exception's message as one line (its first, without colour codes), or its type's name when it has none."""
    text = ANSI.sub("", str(err)).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1].removeprefix("builtins.")  # the model's own message ends TorchScript's traceback
    return lines[0]


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters (from a file name, say) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def describe(err: OSError) -> str:
    """An operating-system error for people: its reason and the file it names."""
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return f"{err.strerror or err}{where}"
