"""Requests in: the body read within a byte limit, the form's fields checked, an uploaded image decoded
with occlens's own guards (:func:`occlens.core.image.read_image`: the pixel limit, the decompression
bomb check, every format Pillow reads)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from ..core.errors import OcclensError, TooLarge, one_line, option
from ..core.image import read_image
from .errors import NotAForm, RequestError, restated
from .viewer import MEGABYTE, UploadLimits


async def read_form(request: Request, limits: UploadLimits, allowed: tuple[str, ...]) -> FormData:
    """The request's multipart (or URL-encoded) form, its body at most ``limits.max_bytes``, every field named in
    ``allowed`` and given once."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise NotAForm(
            f"expected a multipart/form-data body (an image file and form fields), got {kind or 'no content type'!r}"
        )
    too_big = TooLarge(
        f"the request is larger than the upload limit of {limits.max_bytes / MEGABYTE:.3g} MB; send a smaller "
        f"image, or raise the limit ({option('max_upload_mb')})",
        option="max_upload_mb", expected=f"at most {limits.max_bytes} bytes", fix="send a smaller image",
    )  # fmt: skip
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes:
            raise too_big

    async def replay() -> dict:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=len(allowed) + 2)
    except Exception as err:  # the multipart parser's errors (malformed body, too many fields)
        raise RequestError(f"cannot read the form: {one_line(str(err) or type(err).__name__)}") from None
    names = list(form.keys())
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        given = ", ".join(map(repr, unknown))
        raise RequestError(f"unknown form field(s) {given}; the fields are {', '.join(allowed)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RequestError(f"form field(s) {', '.join(map(repr, twice))} given more than once; give each once")
    return form


def text_field(form: FormData, name: str) -> str | None:
    """A text field's value, stripped (None when absent or empty); a file there is an error."""
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise RequestError(f"form field {name!r} must be text, got a file")
    return value.strip() or None


async def uploaded_image(form: FormData, name: str, limits: UploadLimits) -> tuple[Image.Image, str]:
    """The image file in field ``name``, decoded to RGB (EXIF rotation applied), and its file name."""
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise RequestError(f"form field {name!r} must be an image file (multipart upload), got text")
    data = await upload.read()
    label = one_line(upload.filename or "the upload")
    if not data:
        raise RequestError(f"{label}: the file is empty")
    image = await asyncio.to_thread(decode_upload, data, label, limits)  # off the event loop: other requests go on
    return image, label


def read_file(path: Path, limits: UploadLimits) -> Image.Image:
    """A file of the server's (a run's image) decoded by :func:`occlens.core.image.read_image`."""
    return read_image(path, max_pixels=limits.max_pixels)


def decode_upload(data: bytes, label: str, limits: UploadLimits) -> Image.Image:
    """``data`` decoded by :func:`occlens.core.image.read_image` (from a private temporary file), its messages
    naming ``label`` instead of that file."""
    fd, tmp = tempfile.mkstemp(prefix="occlens-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_image(tmp, max_pixels=limits.max_pixels)
    except OcclensError as err:  # said of the upload, not of the temporary file
        value = err.value.replace(tmp, label) if isinstance(err.value, str) else err.value
        raise restated(err, err.args[0].replace(tmp, label), value) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
