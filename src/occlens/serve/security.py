"""Who may ask, and what a browser may do with the answer.

In front of every request: a Host header that names a loopback address on a loopback bind (no DNS
rebinding); nothing fetched by another origin's page (:func:`foreign`: the browser's ``Sec-Fetch-Site``, else
its ``Origin``), so that no page but the server's own can read a run's data, queue work or frame a page; and
the token, when the server has one. On every answer: the headers of :func:`answer_headers` (no other origin
may embed it, no sniffing, no caching of anything but the page's static assets, a content security policy
without inline script).
"""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from ..core.errors import one_line
from .answers import error, logged
from .viewer import is_loopback

COOKIE = "occlens_token"  # the cookie's name is this and the server's port: cookies ignore ports, so two
# servers on one host (each with its own token) would otherwise overwrite each other's, and a page of one
# would be refused after the other was opened
OWN_SITES = ("same-origin", "none")  # Sec-Fetch-Site of the server's own pages, and of an address typed or bookmarked
PAGE = "/"  # the one address another site may open as a page (a link to it): it holds no data
STATIC = "/static/"  # the page's own script and style: the same for everyone, cacheable
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "x-content-type-options": "nosniff",  # a file is what its type says, never sniffed as a page or a script
    "cross-origin-resource-policy": "same-origin",  # no other origin's page may load it (script, image, fetch)
    "cross-origin-opener-policy": "same-origin",  # a page that opened this one gets no handle on it
    "content-security-policy": POLICY,
    "x-frame-options": "DENY",  # frame-ancestors 'none' for browsers without it
    "referrer-policy": "no-referrer",  # the token in a page's address goes nowhere
}


class AccessGuard:
    """ASGI middleware: on a loopback bind, a Host header that names a loopback address (no DNS rebinding);
    no request from another origin's page (:func:`foreign`); the token on every request when the server has
    one (``Authorization: Bearer``, ``X-Occlens-Token``, ``?token=`` or the cookie that a page opened with
    ``?token=`` gets, so that its scripts and images bring it too: :func:`given_token`); and on every answer,
    refusals included, the headers of :func:`answer_headers`. Each refusal is one line of JSON and one line
    in the log."""

    def __init__(self, app, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        extra = answer_headers(scope["path"])
        cookie = None

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in extra]
                added = [(k.encode(), v.encode()) for k, v in extra.items()]
                message = {**message, "headers": kept + added + ([(b"set-cookie", cookie)] if cookie else [])}
            await send(message)

        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            logged(scope, status, message)
            return await error(message, status)(scope, receive, sending)
        if self.token is not None and given_token(scope, headers)[1] == "query":
            cookie = f"{cookie_name(scope)}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()
        await self.app(scope, receive, sending)

    def refusal(self, scope, headers: dict) -> tuple[int, str] | None:
        """Why the request is refused (its status and one line), or None."""
        if self.loopback and not is_loopback(host_name(headers.get("host", ""))):
            return 421, "this server answers only requests for 127.0.0.1 or localhost (it is bound to loopback)"
        why = foreign(scope, headers)
        if why is not None:
            return 403, f"{why} is refused: only this server's own page may use it; open {PAGE} of this server"
        if self.token is not None:
            given = given_token(scope, headers)[0]
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, "missing or wrong token; pass it as ?token=TOKEN, or the header Authorization: Bearer TOKEN"
        return None


def foreign(scope, headers: dict) -> str | None:
    """What gives a request away as made by another origin's page (its words for the refusal), or None.

    A browser says who made a request in ``Sec-Fetch-Site``: the server's own page is ``same-origin``, an
    address typed or bookmarked ``none``; ``same-site`` (a page on another port of this host) and
    ``cross-site`` are another page's, whatever it asks (a ``<script src>`` or an ``<img>`` of a run's data, a
    fetch, a frame, a form), save following a link to the page itself (:data:`PAGE`), which opens it in a tab
    of its own that the linking page cannot read. A browser that sends no ``Sec-Fetch-Site`` is judged by its
    ``Origin``, which it sends with a POST and with another page's fetch: it must be this server's. A request
    with neither (curl, a script) is not a page's."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site in OWN_SITES or link_to_page(scope, headers):
            return None
        return f"a request from another site's page (Sec-Fetch-Site: {one_line(site)[:40]})"
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, headers):
        return f"a request from another site ({one_line(origin)[:200]})"
    return None


def link_to_page(scope, headers: dict) -> bool:
    """A link followed (or an address opened) to the page, in a tab or window of its own: no frame, no form."""
    return (
        scope["method"] in ("GET", "HEAD")
        and scope["path"] == PAGE
        and headers.get("sec-fetch-mode") == "navigate"
        and headers.get("sec-fetch-dest") == "document"
    )


def answer_headers(path: str) -> dict[str, str]:
    """The headers every answer carries (:data:`HEADERS`) and its caching: none (``no-store``: a run's data, an
    API answer, the page with its settings) but for the page's static assets, which are the same for
    everyone and revalidated (``no-cache``)."""
    return {**HEADERS, "cache-control": "no-cache" if path.startswith(STATIC) else "no-store"}


def same_origin(origin: str, headers: dict) -> bool:
    """Whether a browser's ``Origin`` is this server's own address (the Host it was asked by)."""
    parsed = urlsplit(origin)
    return parsed.scheme in ("http", "https") and parsed.netloc.lower() == headers.get("host", "").lower()


def host_name(host: str) -> str:
    """The name in a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def given_token(scope, headers: dict) -> tuple[str, str]:
    """The token the request brings and where: the first of the header, the query and the cookie that it has,
    its value stripped of blanks (so a blank one is no token: ``("", where)``), or ``("", "none")``. One rule
    for every source; the guard compares it with the server's in constant time."""
    auth = headers.get("authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip(), "header"
    if "x-occlens-token" in headers:
        return headers["x-occlens-token"].strip(), "header"
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get("token")
    if values:
        return values[0].strip(), "query"
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:  # a malformed cookie header is no token
        return "", "none"
    name = cookie_name(scope)
    return (jar[name].value.strip(), "cookie") if name in jar else ("", "none")


def cookie_name(scope) -> str:
    """The token cookie's name on this server: :data:`COOKIE` and the port it listens on (``occlens_token_8765``)."""
    server = scope.get("server") or ("", None)
    return f"{COOKIE}_{server[1]}" if server[1] is not None else COOKIE
