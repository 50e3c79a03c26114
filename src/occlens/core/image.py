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

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, TooLarge, option, shown

_OPENING = threading.Lock()  # see read_image
_INTEGER_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file into an RGB PIL image, EXIF rotation applied.

    ``max_pixels`` replaces Pillow's decompression-bomb limit for this call
    (``None`` keeps Pillow's default of about 89 million pixels, ``0`` lifts it).
    """
    if not str(os.fspath(path)).strip():  # Path("") would be the current folder
        raise _bad("image is an empty string", path, "an image file", "give the path of an image file")
    path = Path(path)
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
    try:
        with _OPENING:  # Pillow's limit and the warnings filters are the process's: one thread sets them at a time
            saved = Image.MAX_IMAGE_PIXELS
            if max_pixels is not None:
                Image.MAX_IMAGE_PIXELS = max_pixels or None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    img = Image.open(path)  # reads the header and checks the size; the pixels come below
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with img:
            img.load()
            return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise TooLarge(
            f"{path}: {err}; if you trust this file, raise the limit: {option('max_pixels')}",
            option="max_pixels", value=str(path), fix="raise the limit",
        ) from None  # fmt: skip
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode the image ({err}); the file may be truncated or corrupt") from None


def _has_bytes(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode (grayscale, palette, RGBA, CMYK, 16-bit, ...) to 8-bit RGB, EXIF-rotated.

    Transparent pixels are composited over white, 16/32-bit grayscale is scaled by
    its own maximum range rather than clipped.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        img = Image.fromarray(_wide_to_uint8(np.asarray(img), img.mode), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float grayscale to uint8, scaled by the range the data evidently uses."""
    arr = arr.astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if mode == "F" and peak <= 1.0:
        top = 1.0
    elif mode.startswith("I;16") or 255.0 < peak <= 65535.0:
        top = 65535.0
    elif peak <= 255.0:
        top = 255.0
    else:
        top = peak
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


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
