"""The server's limits, declared once (:mod:`occlens.core.declare`): what a request may bring and what decoding it
may take. No torch and no Starlette here: the command's ``--help`` reads these declarations."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_int, check_positive
from ..core.declare import declared, validate
from ..core.errors import ConfigError

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
