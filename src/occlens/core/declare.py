"""Options declared once: name, type, default, check, help and whether they change outputs.

A settings carrier (:class:`occlens.Settings`, the application's ``Options``, the viewer's limits) is a
frozen dataclass whose fields are made by :func:`declared`. Everything else about an option is derived
from that one declaration: the check run when the carrier is built (:func:`validate`), the command's flag
and its help (``occlens.cli.parser``), the HTTP API's form field (``occlens.serve``), and whether the run
fingerprint records it (:func:`output_names`). The public functions' keywords stay written out, typed, and
a test holds each one's name and default to its declaration.

This module imports no torch: the command's ``--help`` is made from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEY = "occlens"


@dataclass(frozen=True)
class Declaration:
    """One option: its Python name, default, check, help, and how it is typed on the command line or a form.

    ``check(value, name)`` returns the value in canonical form or raises a ConfigError; ``parse(text)`` turns
    a typed string into a value for ``check`` (None: the string itself); ``switch``: a flag without a value
    (True when given); ``output``: the option changes what is written (the run fingerprint records it);
    ``flag``: the command line offers it (an option given there another way, such as the model's ``output``
    in its description flags, says False); ``group``: the heading of its flag in ``--help``.
    """

    name: str
    default: Any
    help: str
    check: Callable[[Any, str], Any]
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    switch: bool = False
    output: bool = False
    flag: bool = True
    group: str | None = None

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    def from_text(self, text: str) -> Any:
        """The option's value from a string typed on the command line or in a form, checked."""
        return self.check(text if self.parse is None else self.parse(text), self.name)


def declared(default: Any, help: str, check: Callable[[Any, str], Any], **how: Any) -> Any:
    """A dataclass field that declares an option (see :class:`Declaration` for ``how``)."""
    return dataclasses.field(default=default, metadata={KEY: (help, check, how)})


def declarations(carrier: Any) -> tuple[Declaration, ...]:
    """The options a carrier class (or instance) declares, in field order."""
    out = []
    for f in dataclasses.fields(carrier):
        if KEY in f.metadata:
            help, check, how = f.metadata[KEY]
            out.append(Declaration(f.name, f.default, help, check, **how))
    return tuple(out)


def validate(carrier: Any) -> None:
    """Check every declared field of a frozen carrier being built, storing each in canonical form."""
    for d in declarations(carrier):
        object.__setattr__(carrier, d.name, d.check(getattr(carrier, d.name), d.name))


def output_names(carrier: Any) -> tuple[str, ...]:
    """The options of a carrier that change outputs: what the run fingerprint records."""
    return tuple(d.name for d in declarations(carrier) if d.output)


def defaults(carrier: Any) -> dict[str, Any]:
    return {d.name: d.default for d in declarations(carrier)}
