"""What the server answers besides results: every error as one line of JSON (its status chosen by
:func:`status_of`, the values it repeats cut short by :func:`clipped`) and one line in the log, and the
server-sent events of a streamed explanation."""

from __future__ import annotations

import json
import logging
import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.errors import ModelError, OcclensError, TooLarge, first_line, one_line
from .errors import Forbidden, NotAForm, NotFound, restated
from .fields import http_name
from .queue import Busy

log = logging.getLogger("occlens.serve")  # its lines go where uvicorn's do (occlens.serve.uvicorn_server)

SHOWN = 80  # characters of a long value that an error repeats
LONG = SHOWN + 40  # characters of a value cut
LONG_WORD = re.compile(rf"\S{{{LONG},}}")
LONG_QUOTE = re.compile(rf"'(?:[^'\\]|\\.){{{LONG},}}'|\"(?:[^\"\\]|\\.){{{LONG},}}\"")
MOST = 1000  # characters of an error line at most


def clipped(message: str) -> str:
    """``message`` on one line, each long value it repeats (a quoted string, or a run without spaces: the
    digits of a number, a name) cut to its first SHOWN characters and its length, and the whole at most MOST
    characters: a request of a megabyte is not sent back, nor written to the log."""

    def cut(match: re.Match) -> str:
        text = match.group()
        quote = text[0] if text[0] in "'\"" else ""
        return f"{text[: SHOWN + len(quote)]}...{quote} ({len(text) - 2 * len(quote)} characters)"

    line = LONG_WORD.sub(cut, LONG_QUOTE.sub(cut, one_line(message)))
    return line if len(line) <= MOST else line[: MOST - 3] + "..."


def error(message: str, status: int) -> JSONResponse:
    """An error answer: ``{"error": message}`` on one line (:func:`clipped`), with ``status``."""
    return JSONResponse({"error": clipped(message)}, status_code=status)


def logged(scope, status: int, message: str) -> None:
    """The log's one line for a request refused or failed with ``status``."""
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "%s %s %s: %s", status, scope.get("method", ""), clipped(scope.get("path", "")), clipped(message))


STATUSES: tuple[tuple[type[OcclensError], int], ...] = (  # the first type that matches; subclasses first
    (TooLarge, 413),  # an image over the pixel limit, a body over the upload limit
    (NotAForm, 415),
    (NotFound, 404),
    (Forbidden, 403),
    (Busy, 503),  # the model queue is full
    (ModelError, 500),  # the model failed: the server's side
    (OcclensError, 400),  # the rest is the request's: ConfigError, ImageError, UnknownClass, RequestError
)


def status_of(err: Exception) -> int:
    """The HTTP status of an error, by its type (:data:`STATUSES`); 500 for anything not occlens's own."""
    return next((status for kind, status in STATUSES if isinstance(err, kind)), 500)


def message_of(err: Exception) -> str:
    """An error as its one line: occlens's own with the options named as the HTTP API names them
    (:func:`~occlens.serve.fields.http_name`), anything else as an internal error."""
    if isinstance(err, OcclensError):
        return first_line(restated(err, err.render(http_name)))
    return f"internal error: {type(err).__name__}: {first_line(err)} (please report it)"


async def on_error(request: Request, err: Exception) -> Response:
    """occlens's own errors (handled here: no traceback) and, from Starlette's last handler, any other exception
    (which Starlette then raises again, for uvicorn to log with its traceback: a fault of the server's)."""
    status, message = status_of(err), message_of(err)
    if isinstance(err, OcclensError):
        logged(request.scope, status, message)
    return error(message, status)


async def on_http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's own answers (no such address, another method) as JSON, like every other error."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        message = f"no such address: {where} (the HTTP API is in the README, under occlens serve)"
    elif err.status_code == 405:
        message = f"{where}: this address takes {(err.headers or {}).get('Allow', 'another method')}"
    else:
        message = f"{where}: {err.detail}"
    logged(request.scope, err.status_code, message)
    return JSONResponse({"error": clipped(message)}, status_code=err.status_code, headers=err.headers)


async def on_cancelled(request: Request, err: Exception) -> Response:
    logged(request.scope, 499, "the client went away; its work stopped")
    return Response(status_code=499)  # nobody is listening: the client went away


def sse(kind: str, data: dict) -> bytes:
    """One server-sent event: its kind and its data as JSON."""
    return f"event: {kind}\ndata: {json.dumps(data, allow_nan=False)}\n\n".encode()
