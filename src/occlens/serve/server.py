"""The viewer's web app (Starlette), assembled: the HTTP API's routes (:mod:`occlens.serve.routes`) on one
shared state, every error answered as one line of JSON (:mod:`occlens.serve.answers`), the model queue and
the decoding queue closed on shutdown, and the access guard (:mod:`occlens.serve.security`) in front. Every
model call goes through that :class:`~occlens.serve.queue.ModelQueue`; a request whose client disconnects stops its job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from ..core.errors import OcclensError
from .answers import on_cancelled, on_error, on_http_error
from .page import page_html
from .queue import Cancelled
from .routes import ROUTES, ServerState
from .security import AccessGuard
from .viewer import Viewer

if TYPE_CHECKING:
    from starlette.types import ExceptionHandler


def make_app(viewer: Viewer) -> AccessGuard:
    """The viewer's Starlette app behind its access guard (run it with uvicorn: :func:`occlens.serve.serve`)."""
    state = ServerState(viewer, page_html(viewer))
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            OcclensError: on_error,
            Cancelled: on_cancelled,
            HTTPException: cast("ExceptionHandler", on_http_error),  # called with HTTPExceptions only (keyed by class)
            Exception: on_error,
        },  # fmt: skip
        lifespan=lambda app: closing(state),
    )
    app.state.server = state
    app.state.queue = state.queue
    return AccessGuard(app, viewer.token, viewer.loopback)


@asynccontextmanager
async def closing(state: ServerState) -> AsyncIterator[None]:
    yield
    state.queue.close()
    state.decodes.close()
