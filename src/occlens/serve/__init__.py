"""``occlens serve``: an interactive viewer in the browser, on the Python API.

The page shows the image with its window grid and the δL map as it arrives (a coarse pass first, then the
exact map), lets a person click a window or draw a region to see what the model says without it, and
switch the explained class, the window, the fill and the engine; the gradient saliency map sits beside it.
The HTTP API it uses (:mod:`occlens.serve.routes`) is there for scripts too.

Safe by default: bound to 127.0.0.1 (the Host header must name a loopback address); another address needs
a token, generated when none is given, that every request must bring; no other origin's page may read an
answer, post work or frame a page (:mod:`occlens.serve.security`); uploads are limited in bytes and pixels,
and every decoding in memory, checked before it starts (:mod:`occlens.serve.uploads`); a run's files are
served only from its ``report/`` and ``images/`` folders. Needs the ``serve`` extra
(``pip install 'occlens[serve]'``: Starlette, uvicorn, python-multipart), loaded only here.
"""

from __future__ import annotations

import secrets
import socket
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from .limits import UploadLimits

if TYPE_CHECKING:
    from .viewer import Viewer

__all__ = ["UploadLimits", "Viewer", "serve"]


def __getattr__(name: str):
    if name == "Viewer":  # the model's layers (torch) load only when a viewer is made
        from .viewer import Viewer

        return Viewer
    raise AttributeError(f"module 'occlens.serve' has no attribute {name!r}")


EXTRA = "occlens serve needs the serve extra: pip install 'occlens[serve]' (Starlette, uvicorn, python-multipart)"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def require() -> None:
    """Raise a ConfigError that says how to install the extra when Starlette, uvicorn or python-multipart is
    missing."""
    try:
        import multipart  # noqa: F401  (python-multipart: Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA) from None


def check_port(port) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be a port number, 0..65535 (0: a free one), got {port!r}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a ConfigError that says why not."""
    check_port(port)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ConfigError(
            f"--host {host!r}: cannot resolve it ({err.strerror}); give an address of this machine"
        ) from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_server(viewer: Viewer, sock: socket.socket):
    """A uvicorn server for ``viewer`` (:class:`~occlens.serve.server.Viewer`) on the bound ``sock``: uvicorn's
    warnings in its log, and the server's own line for each request it refused or that failed
    (:func:`occlens.serve.answers.said`)."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from .server import make_app

    logging = copy.deepcopy(LOGGING_CONFIG)
    logging["loggers"]["occlens.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(make_app(viewer), log_level="warning", log_config=logging, timeout_graceful_shutdown=2,
                            lifespan="on")  # fmt: skip
    return uvicorn.Server(config)


def serve(
    viewer: Viewer, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, say: Callable[[str], None] | None = None
) -> None:
    """Run ``viewer`` on ``host:port`` until interrupted (Ctrl+C), saying its address; ``occlens serve`` in Python.
    A non-loopback ``host`` needs ``viewer.token``: one is generated (and said) when it has none."""
    require()
    if say is None:  # printed at once: whoever reads a pipe (a service manager, tee) needs the address now

        def say(line: str) -> None:
            print(line, flush=True)

    if viewer.run is not None and viewer.run.other_model(viewer.model):
        warnings.warn(
            f"{viewer.run.root} was made with another model than {viewer.model.name}; the page's live maps are this "
            "model's, the run's files its own (give the run's --model to see the same)",
            stacklevel=2,
        )
    from .viewer import is_loopback

    loopback = is_loopback(host)
    if not loopback and viewer.token is None:
        viewer = replace(viewer, token=secrets.token_urlsafe(18))
        say(f"occlens serve: {host} is not a loopback address; every request must bring this token: {viewer.token}")
    viewer = replace(viewer, loopback=loopback)
    sock = bind(host, port)
    where = address(sock)
    run = "" if viewer.run is None else f", run {viewer.run.root}"
    query = "" if viewer.token is None else f"?token={viewer.token}"
    say(f"occlens serve: {where}{query}  (model {viewer.model.name} on {viewer.model.device}{run}; Ctrl+C stops)")
    try:
        uvicorn_server(viewer, sock).run(sockets=[sock])
    finally:
        sock.close()
