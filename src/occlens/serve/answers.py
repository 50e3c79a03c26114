"""What the server answers besides results: every error as one line of JSON (its status chosen by
:func:`status_of`), and the server-sent events of a streamed explanation."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.errors import ModelError, OcclensError, TooLarge, first_line, one_line
from .errors import Forbidden, NotAForm, NotFound, restated
from .fields import http_name
from .queue import Busy


def error(message: str, status: int) -> JSONResponse:
    """An error answer: ``{"error": message}`` on one line, with ``status``."""
    return JSONResponse({"error": one_line(message)}, status_code=status)


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
    return error(message_of(err), status_of(err))


async def on_http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's own answers (no such address, another method) as JSON, like every other error."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        message = f"no such address: {where} (the HTTP API is in the README, under occlens serve)"
    elif err.status_code == 405:
        message = f"{where}: this address takes {(err.headers or {}).get('Allow', 'another method')}"
    else:
        message = f"{where}: {err.detail}"
    return JSONResponse({"error": one_line(message)}, status_code=err.status_code, headers=err.headers)


async def on_cancelled(request: Request, err: Exception) -> Response:
    return Response(status_code=499)  # nobody is listening: the client went away


def sse(kind: str, data: dict) -> bytes:
    """One server-sent event: its kind and its data as JSON."""
    return f"event: {kind}\ndata: {json.dumps(data, allow_nan=False)}\n\n".encode()
