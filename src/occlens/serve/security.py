"""Who may ask: the token every request must bring (when the server has one), a Host header that names a
loopback address on a loopback bind (no DNS rebinding), and no posts from another site's pages."""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from ..core.errors import one_line
from .answers import error
from .viewer import is_loopback

COOKIE = "occlens_token"


class AccessGuard:
    """ASGI middleware: the token on every request (``Authorization: Bearer``, ``X-Occlens-Token``, ``?token=``
    or the cookie that a page opened with ``?token=`` gets, so that its scripts and images bring it too), and,
    on a loopback bind, a Host header that names a loopback address (no DNS rebinding)."""

    def __init__(self, app, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback and not is_loopback(host_name(headers.get("host", ""))):
            message = "this server answers only requests for 127.0.0.1 or localhost (it is bound to loopback)"
            return await error(message, 421)(scope, receive, send)
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and origin is not None and not same_origin(origin, headers):
            message = f"a request from another site ({one_line(origin)}) is refused; use the page this server serves"
            return await error(message, 403)(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        given, where = given_token(scope, headers)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            message = "missing or wrong token; pass it as ?token=TOKEN, or the header Authorization: Bearer TOKEN"
            return await error(message, 401)(scope, receive, send)
        if where != "query":
            return await self.app(scope, receive, send)
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, with_cookie)


def same_origin(origin: str, headers: dict) -> bool:
    """Whether a browser's ``Origin`` is this server's own address (the Host it was asked by): another web
    page's scripts may not post work to it (a browser sends Origin with every cross-site POST; curl none)."""
    parsed = urlsplit(origin)
    return parsed.scheme in ("http", "https") and parsed.netloc.lower() == headers.get("host", "").lower()


def host_name(host: str) -> str:
    """The name in a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def given_token(scope, headers: dict) -> tuple[str, str]:
    """The token the request brings and where: header, query or cookie (``("", "none")`` without one)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), "header"
    if "x-occlens-token" in headers:
        return headers["x-occlens-token"].strip(), "header"
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if values:
        return values[0], "query"
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token
        return "", "none"
    return (jar[COOKIE].value, "cookie") if COOKIE in jar else ("", "none")
