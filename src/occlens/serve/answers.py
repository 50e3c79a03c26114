"""What the server answers besides results: every error as one line of JSON (its status chosen by
:func:`status_of`), and the server-sent events of a streamed explanation."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.errors import ConfigError, ImageError, ModelError, OcclensError, first_line, one_line
from .errors import RequestError
from .queue import Busy


def error(message: str, status: int) -> JSONResponse:
    """An error answer: ``{"error": message}`` on one line, with ``status``."""
    return JSONResponse({"error": one_line(message)}, status_code=status)


def message_of(err: Exception) -> str:
    """An error as its one line: occlens's own as they are, anything else as an internal error."""
    if isinstance(err, OcclensError):
        return first_line(err)
    return f"internal error: {type(err).__name__}: {first_line(err)} (please report it)"


def status_of(err: Exception) -> int:
    if not isinstance(err, OcclensError):
        return 500
    if isinstance(err, RequestError):
        return err.status
    if isinstance(err, Busy):
        return 503
    if isinstance(err, (ConfigError, ImageError)):
        return 400
    if isinstance(err, ModelError):
        return 500
    return 400


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
