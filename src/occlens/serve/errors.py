"""The server's own refusals, one type per reason (:data:`occlens.serve.answers.STATUSES` gives each its HTTP
status), and :func:`restated`, an error said again of what the request calls it."""

from __future__ import annotations

import copy

from ..core.errors import MISSING, OcclensError


class RequestError(OcclensError):
    """A request the server cannot use: a malformed form, a field it cannot read (400)."""


class NotAForm(RequestError):
    """The body is not a form (415)."""


class NotFound(RequestError):
    """What the request names is not there: a run's image, a file in its folder, the run itself (404)."""


class Forbidden(RequestError):
    """A path outside what the server serves (403)."""


def restated(err: OcclensError, message: str, value=MISSING) -> OcclensError:
    """A copy of ``err``, its type and fields kept, that says ``message`` (the options in it marked as in
    the original's) and, when given, names ``value``."""
    again = copy.copy(err)
    again.args = (message,)
    if value is not MISSING:
        again.value = value
    return again
