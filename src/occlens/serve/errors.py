"""The server's own refusals: a request it will not serve, with the HTTP status that says why."""

from __future__ import annotations

from ..core.errors import OcclensError


class RequestError(OcclensError):
    """A request the server refuses, with its HTTP status (4xx) and one line saying why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
