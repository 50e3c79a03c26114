"""Images in: decode files, accept arrays, tensors and PIL images, validate, return C x H x W in [0, 1].

Accepted forms and how they are read:

* a path (``str`` or ``os.PathLike``): decoded with Pillow, EXIF rotation applied, converted to RGB;
* a PIL image: EXIF rotation applied, converted to RGB;
* a numpy array, H x W x C or H x W: ``uint8`` (0-255), ``uint16`` (0-65535) or float (0-1);
* a torch tensor, C x H x W (or H x W): float (0-1) or ``uint8`` (0-255).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from .errors import ImageError, TooLarge, option, shown

_OPENING = threading.Lock()  # see read_image
_INTEGER_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_image(
    path: str | os.PathLike | BinaryIO,
    *,
    max_pixels: int | None = None,
    max_decode_mb: float | None = None,
    name: str | None = None,
    refuse: frozenset[str] = frozenset(),
) -> Image.Image:
    """Decode an image file into an RGB PIL image, EXIF rotation applied.

    ``path`` is a file's path or an open binary file (an upload; ``name`` is what messages call it).
    ``max_pixels`` replaces Pillow's decompression-bomb limit for this call (``None`` keeps Pillow's default
    of about 89 million pixels, ``0`` lifts it). ``max_decode_mb``: the memory the decoding may take, in MB
    (:func:`decode_cost`, by the file's pixel mode and format), checked from the file's header before any
    pixel is decoded; None: no budget. Either limit exceeded raises :class:`TooLarge`. ``refuse``: formats (as
    Pillow names them, ``"EPS"``) not decoded here.

    The image is decoded once and converted a strip of rows at a time (EXIF rotation included), so the
    decoding holds the file's own pixels and the RGB image, never another full-size copy: an RGB file
    without rotation is returned as it was decoded.
    """
    if isinstance(path, (str, os.PathLike)):
        if not str(os.fspath(path)).strip():  # Path("") would be the current folder
            raise _bad("image is an empty string", path, "an image file", "give the path of an image file")
        path = Path(path)
        label = str(path)
        _check_file(path)
    else:
        label = name or str(getattr(path, "name", None) or "the image")
    try:
        with _OPENING:  # Pillow's limit and the warnings filters are the process's: one thread sets them at a time
            saved = Image.MAX_IMAGE_PIXELS
            if max_pixels is not None:
                Image.MAX_IMAGE_PIXELS = max_pixels or None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    img = Image.open(path, formats=_formats(refuse))  # the header, the size checked; no pixels
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with img:
            _within(img, None, max_decode_mb, label)  # before decoding: what the header says
            img.load()
            method = transposition(img)
            _within(img, method, max_decode_mb, label)  # decoded: its rotation (a PNG says it after its pixels)
            return _rgb(img, method)
    except TooLarge:  # the memory budget's (an ImageError: not a decoder's)
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise TooLarge(
            f"{label}: {err}; if you trust this file, raise the limit: {option('max_pixels')}",
            option="max_pixels", value=label, fix="raise the limit",
        ) from None  # fmt: skip
    except UnidentifiedImageError:
        refused = f"; {', '.join(sorted(refuse))} files are not taken here: convert it to PNG" if refuse else ""
        raise ImageError(f"{label}: not an image Pillow can read (unknown or corrupt format{refused})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{label}: cannot decode the image ({err}); the file may be truncated or corrupt") from None


def _formats(refuse: frozenset[str]) -> list[str] | None:
    if not refuse:
        return None
    Image.init()
    return [f for f in Image.OPEN if f not in refuse]


def _check_file(path: Path) -> None:
    try:
        info = path.stat()
    except OSError as err:  # missing, a symbolic link loop or one to nowhere, a name too long, no permission
        reason = "no such file; check the path" if err.errno == errno.ENOENT else (err.strerror or str(err))
        raise ImageError(f"{path}: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path}: not a regular file (a device, FIFO or socket); give an image file")
    if info.st_size == 0 and not _has_bytes(path):  # /proc files say 0 and still have contents
        raise ImageError(f"{path}: the file is empty")


def _has_bytes(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# the memory a decoding takes

MEGABYTE = 1 << 20
STRIP_PIXELS = 1 << 20  # converted to RGB (and rotated) this many pixels at a time
STRIP_BYTES = 16  # per pixel of a strip, its copies while it is converted (a crop, an RGBA composite, RGB)
WIDE_STRIP_BYTES = 48  # ... of a 16/32-bit or float strip: its values as float64 as well
DECODER_BYTES = 8 * MEGABYTE  # a decoder's tables and buffers of a few rows, whatever the image's size
# What a format's decoder holds beyond the image it fills, in bytes per pixel, where it is more than a few
# rows (benchmarks/serve_memory.py measures them): WebP's decoder keeps two canvases and hands over a third
# copy; AVIF its YUV planes; JPEG 2000 an int32 per sample; SGI its planes. A progressive JPEG keeps every DCT
# coefficient (2 bytes per sample) and a TIFF one strip or tile (:func:`_tiff_bytes`); a format not named
# here is taken to hold as much as the worst of these.
ROW_DECODERS = frozenset({"PNG", "GIF", "BMP", "DIB", "PPM", "PCX", "TGA", "QOI", "IM", "MSP", "DCX", "XBM",
                          "SPIDER", "SUN", "PIXAR"})  # fmt: skip
WHOLE_COPIES = {"WEBP": 12, "AVIF": 8, "SGI": 4}
UNKNOWN_FORMAT = 16


def pixel_bytes(mode: str) -> int:
    """The bytes Pillow stores per pixel of ``mode``: 1 for 1, L and P, 2 for 16-bit grayscale, else 4 (RGB too)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith(("I;16", "BGR;15", "BGR;16")):
        return 2
    return 3 if mode == "BGR;24" else 4


def decode_cost(img: Image.Image, method: Image.Transpose | None = None) -> int:
    """The bytes that decoding ``img`` (opened: its header read) to RGB takes at its peak, by its pixel mode and
    format: its pixels as its mode stores them (:func:`pixel_bytes`: an RGB pixel takes 4 bytes, as an RGBA,
    CMYK, 32-bit or float one; a 16-bit one 2, an 8-bit one 1), what its format's decoder holds beside them,
    and, unless it is RGB and needs no rotation (``method``), the RGB image it becomes and a strip's copies
    while it is converted."""
    pixels = img.width * img.height
    layers = len(img.getbands())
    if img.format is None or img.format in ROW_DECODERS:  # None: an image in memory, nothing to decode
        decoder = 0
    elif img.format == "JPEG" or img.format == "MPO":
        decoder = pixels * 2 * layers if img.info.get("progressive") else 0
    elif img.format == "TIFF":
        decoder = _tiff_bytes(img)
    elif img.format == "JPEG2000":
        decoder = pixels * (4 * layers + 4)
    else:
        decoder = pixels * WHOLE_COPIES.get(img.format, UNKNOWN_FORMAT)
    cost = DECODER_BYTES + pixels * pixel_bytes(img.mode) + decoder
    if img.mode != "RGB" or method is not None:
        strip = WIDE_STRIP_BYTES if img.mode.startswith(WIDE_MODES) else STRIP_BYTES
        cost += pixels * 4 + min(pixels, STRIP_PIXELS) * strip
    return cost


def _tiff_bytes(img: Image.Image) -> int:
    """A TIFF decoder's buffer: one tile, or one strip of rows (8 bytes a pixel: its samples and their RGBA)."""
    tags = getattr(img, "tag_v2", {})
    tile = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if tile[0] and tile[1]:
        return int(tile[0]) * int(tile[1]) * 8
    rows = tags.get(278) or img.height  # RowsPerStrip
    return min(int(rows), img.height) * img.width * 8


def _within(img: Image.Image, method, max_decode_mb: float | None, label: str) -> None:
    if max_decode_mb is None:
        return
    cost = decode_cost(img, method)
    if cost > max_decode_mb * MEGABYTE:
        kind = f"{img.width}x{img.height} {img.mode}" + (f" {img.format}" if img.format else "")
        raise TooLarge(
            f"{label}: decoding this {kind} image takes about {cost / MEGABYTE:.0f} MB, over the memory budget of "
            f"{max_decode_mb:g} MB; send a smaller image, or raise the budget: {option('max_decode_mb')}",
            option="max_decode_mb", value=label, expected=f"an image that decodes in at most {max_decode_mb:g} MB",
            fix="send a smaller image, or raise the budget",
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# any mode to RGB

TRANSPOSITIONS = {  # EXIF orientation -> how to turn the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WIDE_MODES = ("I", "F")  # 16/32-bit grayscale and float: scaled to 8 bits by the range the image uses


def transposition(img: Image.Image) -> Image.Transpose | None:
    """How ``img``'s EXIF orientation turns it upright, or None (none, or upright already)."""
    try:
        return TRANSPOSITIONS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a malformed EXIF block reads as no orientation, as Pillow's own readers take it
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode (grayscale, palette, RGBA, CMYK, 16-bit, ...) to 8-bit RGB, EXIF-rotated: ``img`` itself
    when it is RGB and upright already (no copy), else a new image.

    Transparent pixels are composited over white, 16/32-bit grayscale is scaled by
    its own maximum range rather than clipped.
    """
    img.load()
    return _rgb(img, transposition(img))


def _rgb(img: Image.Image, method: Image.Transpose | None) -> Image.Image:
    """``img`` (loaded) as RGB, turned by ``method``: converted a strip of rows at a time into the result, so that
    no second full-size copy of ``img`` is made. Each pixel is converted as the whole image would be (the
    16-bit scale is the whole image's), so the result is the same as converting it at once."""
    if img.mode == "RGB" and method is None:
        return img
    width, height = img.size
    turned = method in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                        Image.Transpose.ROTATE_270)  # fmt: skip
    out = Image.new("RGB", (height, width) if turned else (width, height))
    rows = max(1, STRIP_PIXELS // width)
    top = _wide_top(img, rows) if img.mode.startswith(WIDE_MODES) else None
    for y in range(0, height, rows):
        end = min(y + rows, height)
        strip = _strip_rgb(img.crop((0, y, width, end)), top)
        if method is not None:
            strip = strip.transpose(method)
        out.paste(strip, _place(method, y, end, height))
    return out


def _place(method: Image.Transpose | None, y: int, end: int, height: int) -> tuple[int, int]:
    """Where the strip of rows ``y:end`` of an image ``height`` rows high lands once turned by ``method``."""
    if method in (Image.Transpose.ROTATE_180, Image.Transpose.FLIP_TOP_BOTTOM):
        return 0, height - end
    if method in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_90):
        return y, 0
    if method in (Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE):
        return height - end, 0
    return 0, y  # none, or FLIP_LEFT_RIGHT


def _wide_top(img: Image.Image, rows: int) -> float:
    """What a 16/32-bit or float grayscale image's values are scaled by to 8 bits: the range they evidently use
    (1 for floats up to 1; 65535 for 16-bit data or values above 255; 255; else the largest value)."""
    strips = (img.crop((0, y, img.width, min(y + rows, img.height))) for y in range(0, img.height, rows))
    peaks = [np.asarray(strip).max() for strip in strips]
    peak = float(np.max(np.array(peaks, dtype=np.float64)))  # NaN anywhere stays NaN
    if img.mode == "F" and peak <= 1.0:
        return 1.0
    if img.mode.startswith("I;16") or 255.0 < peak <= 65535.0:
        return 65535.0
    if peak <= 255.0:
        return 255.0
    return peak


def _strip_rgb(img: Image.Image, top: float | None) -> Image.Image:
    """A strip (any mode, upright or not) as RGB: wide grayscale scaled by ``top``, transparency over white."""
    if top is not None:
        arr = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def to_tensor(image) -> torch.Tensor:
    """Any accepted image form to a float32 C x H x W tensor in [0, 1] (a new tensor; the input is not changed).

    Its memory is aligned to 64 bytes, as torch's own tensors are: vectorised kernels take another
    path on other addresses and round differently, so the same image would score 1e-8 apart
    depending on where numpy happened to put its copy (a run's worker processes and a loop did).
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        return _aligned(np.asarray(to_rgb(image), dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0))
    if isinstance(image, np.ndarray):
        return _aligned(_from_numpy(image).numpy())
    if isinstance(image, torch.Tensor):
        return _aligned(_from_torch(image).numpy())
    expected = "a path, PIL image, numpy array (H x W x C) or torch tensor (C x H x W)"
    fix = "the model comes first: explain(model, image)" if callable(image) else "give one of those"  # a model
    raise _bad(f"image must be {expected}, got {shown(image)}", image, expected, fix)


ALIGNMENT = 64  # bytes


def _aligned(values: np.ndarray) -> torch.Tensor:
    """A float32 C-contiguous copy of ``values`` whose first element sits on a 64-byte boundary."""
    buffer = np.empty(values.size + ALIGNMENT // 4, dtype=np.float32)
    start = (-buffer.ctypes.data % ALIGNMENT) // 4
    out = buffer[start : start + values.size].reshape(values.shape)
    out[...] = values
    return torch.from_numpy(out)


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise _bad(
            f"a numpy image must be H x W x C or H x W, got shape {arr.shape}",
            arr.shape,
            "H x W x C",
            "pass one image at a time (or a list of images)",
        )
    if arr.shape[2] > 4 and arr.shape[0] <= 4:
        raise _bad(
            f"numpy image of shape {arr.shape} looks channels-first; numpy images are H x W x C",
            arr.shape,
            "H x W x C",
            "pass arr.transpose(1, 2, 0), or a torch tensor for C x H x W",
        )
    if arr.dtype in _INTEGER_RANGES:
        out = arr.astype(np.float32) / _INTEGER_RANGES[arr.dtype]
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32, copy=False)  # read only: to_tensor makes the one copy
    else:
        raise _bad(
            f"numpy image dtype must be uint8, uint16 or float, got {arr.dtype}",
            str(arr.dtype),
            "uint8, uint16 or float",
            "convert it, e.g. arr.astype(np.float32) / 255 for values 0-255",
        )
    with warnings.catch_warnings():  # a read-only array (a result's image): torch warns, though it only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(out)
    return _checked(tensor.permute(2, 0, 1))


def _from_torch(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise _bad(
            f"a tensor image must be C x H x W (or 1 x C x H x W), got shape {tuple(t.shape)}",
            tuple(t.shape),
            "C x H x W",
            "pass one image at a time (or a list of images)",
        )
    if t.shape[0] > 4 and t.shape[2] <= 4:
        raise _bad(
            f"tensor image of shape {tuple(t.shape)} looks channels-last; tensors are C x H x W",
            tuple(t.shape),
            "C x H x W",
            "pass t.permute(2, 0, 1)",
        )
    if t.dtype == torch.uint8:
        out = t.to(torch.float32) / 255.0
    elif t.is_floating_point():
        out = t.to(torch.float32)
    else:
        raise _bad(
            f"tensor image dtype must be float or uint8, got {t.dtype}",
            str(t.dtype),
            "float or uint8",
            "convert it, e.g. t.float() / 255 for values 0-255",
        )
    return _checked(out.cpu())  # read only: to_tensor makes the one copy (with numpy, see _checked)


def _checked(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32 C x H x W on the CPU, any strides) if it is a valid image. Checked in numpy: single-threaded,
    as fast as torch for one image and free of the start-up cost of torch's CPU thread pool, which
    measured tens of milliseconds on a 16-core GPU host (more than a whole explanation there)."""
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise _bad(
            f"image is empty: shape {tuple(t.shape)} (C x H x W)",
            tuple(t.shape),
            "at least 1 x 1 pixel",
            "give an image with pixels",
        )
    a = t.numpy()
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise _bad(
            f"image contains {bad} NaN or infinite values", bad, "finite values", "clean or clip the image first"
        )
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise _bad(
            f"float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]",
            (lo, hi),
            "values in [0, 1]",
            "divide 0-255 data by 255, or undo the model's normalisation (occlens normalises after occluding)",
        )
    return t


def _bad(problem: str, value, expected: str, fix: str) -> ImageError:
    """An image argument that cannot be used: the problem, then the fix, in one line (and as fields)."""
    return ImageError(f"{problem}; {fix}", option="image", value=value, expected=expected, fix=fix)


PREVIEW_QUALITY = 82  # JPEG quality of every preview and thumbnail occlens writes (runs, the report, the viewer)


def jpeg_bytes(image: Image.Image) -> bytes:
    """``image`` (RGB) as a JPEG file's bytes, at :data:`PREVIEW_QUALITY`: the one encoding of previews."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()
