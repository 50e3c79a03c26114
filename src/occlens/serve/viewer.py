"""What the viewer serves, as data: the model, the settings the page starts from, the limits on what a request
may bring, a run's folder, the token. Nothing here needs the serve extra."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address

from ..app.options import Options
from ..core.errors import ConfigError
from ..core.settings import Settings
from ..models.loaded import LoadedModel
from ..models.volume import VOLUME_MODEL
from .limits import DEFAULT_DECODE_MB, DEFAULT_DECODES, DEFAULT_UPLOAD_MB, MEGABYTE, NOT_DECODED, UploadLimits  # noqa: F401
from .rundir import RunFolder

LOOPBACK_NAMES = ("localhost",)

MIN_TOKEN = 8  # characters
TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # unchanged in a URL, a header and a cookie


def check_token(token) -> None:
    """A token is at least MIN_TOKEN characters of letters, digits and ``- _ . ~``: no blank, no space, nothing a
    URL, a header or a cookie would change on the way. The message does not repeat it (it is a secret)."""
    if token is None:
        return
    if not isinstance(token, str) or len(token) < MIN_TOKEN or not TOKEN.fullmatch(token):
        what = f"a {type(token).__name__}" if not isinstance(token, str) else f"{len(token)} characters"
        if isinstance(token, str) and token and not TOKEN.fullmatch(token):
            what += ", not all letters, digits and - _ . ~"
        raise ConfigError(
            f"the token must be at least {MIN_TOKEN} characters, letters, digits and - _ . ~ only (an empty or "
            f"blank one would let every request in; it travels in URLs, headers and cookies), got {what}; give "
            "another --token, or none to have one generated",
            option="token", expected=f"at least {MIN_TOKEN} of A-Z a-z 0-9 - _ . ~", fix="give another token",
        )  # fmt: skip


@dataclass(frozen=True)
class Viewer:
    """What the server runs: the model, the default settings the page starts from, the limits, and
    optionally a run's folder; ``token``: the secret every request must bring (None: none asked)."""

    model: LoadedModel
    settings: Settings = Settings()
    options: Options = Options()
    limits: UploadLimits = UploadLimits()
    run: RunFolder | None = None
    token: str | None = None
    loopback: bool = True  # bound to a loopback address: the Host header must name one (DNS rebinding)

    def __post_init__(self) -> None:
        check_token(self.token)


def takes_volumes(model: LoadedModel) -> bool:
    """Whether the served model is a volume model (:mod:`occlens.models.volume`): it takes NIfTI uploads, not photos."""
    return model.preprocess_from == VOLUME_MODEL


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 possibly in brackets) is this machine's loopback."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
