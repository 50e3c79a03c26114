"""Errors as the command says them: the library's structured errors rendered for a terminal."""

from __future__ import annotations

from ..core.errors import OcclensError, UnknownClass, flag


def said(err: OcclensError) -> str:
    """An error as the command says it: options named by their flags, and for an unknown class name how to
    list the names."""
    text = err.render(flag)
    if isinstance(err, UnknownClass):
        text += "; occlens labels --grep WORD lists the names, --labels FILE gives your own"
    return text
