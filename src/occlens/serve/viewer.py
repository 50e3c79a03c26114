"""What the viewer serves, as data: the model, the settings the page starts from, the limits on what a request
may bring, a run's folder, the token. Nothing here needs the serve extra."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address

from ..app.options import Options
from ..core.checks import check_int, check_positive
from ..core.declare import declared, validate
from ..core.errors import ConfigError
from ..core.settings import Settings
from ..models.loaded import LoadedModel
from .rundir import RunFolder

LOOPBACK_NAMES = ("localhost",)

MEGABYTE = 1 << 20
DEFAULT_UPLOAD_MB = 32
DEFAULT_DECODE_MB = 512  # an RGB image at Pillow's pixel limit (89 million pixels, 341 MB) fits, twice at once
DEFAULT_DECODES = 2
# Formats the server does not decode: EPS runs Ghostscript (another program, on what a client sent); ICO, CUR
# and ICNS hold another image whose size their header does not say, so its memory cannot be checked first.
NOT_DECODED = frozenset({"EPS", "ICO", "CUR", "ICNS"})


@dataclass(frozen=True)
class UploadLimits:
    """What a request may bring and what decoding it may take: ``max_bytes`` of body, images of at most
    ``max_pixels`` (None: Pillow's decompression-bomb limit, about 89 million; 0: none), each decoded within
    ``max_decode_mb`` of memory, at most ``decodes`` at once (declared options: ``occlens serve
    --max-decode-mb``, ``--decodes``)."""

    max_bytes: int = DEFAULT_UPLOAD_MB * MEGABYTE
    max_pixels: int | None = None
    max_decode_mb: float = declared(
        DEFAULT_DECODE_MB, "memory one image's decoding may take, in MB, by its size, pixel mode and format (an "
        "RGB, RGBA, CMYK, 32-bit or float pixel is stored in 4 bytes, a 16-bit one in 2; converting to RGB adds 4; "
        "some formats' decoders hold more); a larger image is refused (413) before it is decoded",
        check_positive, parse=float, metavar="MB",
    )  # fmt: skip
    decodes: int = declared(
        DEFAULT_DECODES, "images decoded at once, each on a thread of its own; more wait their turn (the decoding "
        "memory is at most --max-decode-mb times this)", check_int(1), parse=int, metavar="N",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"the upload limit must be a positive number of bytes, got {self.max_bytes!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels < 0):
            raise ConfigError(f"max_pixels must be a whole number >= 0 or None, got {self.max_pixels!r}")
        validate(self)


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 possibly in brackets) is this machine's loopback."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
