"""What the viewer serves, as data: the model, the settings the page starts from, the limits on what a request
may bring, a run's folder, the token. Nothing here needs the serve extra."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from ..app.options import Options
from ..core.errors import ConfigError
from ..core.settings import Settings
from ..models.loaded import LoadedModel
from .rundir import RunFolder

LOOPBACK_NAMES = ("localhost",)

MEGABYTE = 1 << 20
DEFAULT_UPLOAD_MB = 32


@dataclass(frozen=True)
class UploadLimits:
    """What a request may bring: ``max_bytes`` of body, images of at most ``max_pixels`` (None: Pillow's
    decompression-bomb limit, about 89 million; 0: none)."""

    max_bytes: int = DEFAULT_UPLOAD_MB * MEGABYTE
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"the upload limit must be a positive number of bytes, got {self.max_bytes!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels < 0):
            raise ConfigError(f"max_pixels must be a whole number >= 0 or None, got {self.max_pixels!r}")


MIN_TOKEN = 8  # characters


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
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < MIN_TOKEN):
            raise ConfigError(
                f"the token must be a string of at least {MIN_TOKEN} characters (an empty one would let every "
                f"request in); give a longer --token, or none to have one generated"
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 possibly in brackets) is this machine's loopback."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
