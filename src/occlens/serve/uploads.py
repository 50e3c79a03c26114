"""Requests in: the body read as it streams, within a byte limit, into the form's fields (each short, named,
given once); an image file decoded with occlens's own guards (:func:`occlens.core.image.read_image`: the
pixel limit, the memory budget checked before decoding, every format Pillow reads but those it cannot
bound), on the decoding queue's threads."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from ..core.errors import TooLarge, one_line, option
from ..core.image import read_image
from .errors import NotAForm, RequestError
from .queue import Cancelled
from .viewer import MEGABYTE, NOT_DECODED, UploadLimits

FIELD_BYTES = 4096  # a text field's value at most: a window, a class name, a box, a list of true labels
NAME_CHARACTERS = 120  # of an uploaded file's name, as a message repeats it


async def read_form(request: Request, limits: UploadLimits, allowed: tuple[str, ...]) -> FormData:
    """The request's multipart (or URL-encoded) form, its body at most ``limits.max_bytes``, every field named in
    ``allowed`` and given once, each text field at most FIELD_BYTES. The body is parsed as it arrives (files
    go to temporary files, as Starlette spools them); a client that leaves meanwhile is :class:`Cancelled`."""
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
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limits.max_bytes:
                raise too_big
        return message

    try:
        form = await Request(request.scope, receive).form(
            max_files=2, max_fields=len(allowed) + 2, max_part_size=FIELD_BYTES
        )
    except ClientDisconnect:
        raise Cancelled from None
    except HTTPException as err:  # the multipart parser's own refusals (malformed, too many fields, too long)
        raise RequestError(f"cannot read the form: {form_problem(str(err.detail))}") from None
    except (TooLarge, Cancelled):
        raise
    except Exception as err:  # a parser's error of another kind
        raise RequestError(f"cannot read the form: {one_line(str(err) or type(err).__name__)}") from None
    names = [name for name, _ in form.multi_items()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        given = ", ".join(map(repr, unknown))
        raise RequestError(f"unknown form field(s) {given}; the fields are {', '.join(allowed)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RequestError(f"form field(s) {', '.join(map(repr, twice))} given more than once; give each once")
    return form


def form_problem(detail: str) -> str:
    if "maximum size" in detail:
        return f"a text field is longer than {FIELD_BYTES} bytes; the fields take short values (see the HTTP API)"
    return one_line(detail)


def text_field(form: FormData, name: str) -> str | None:
    """A text field's value, stripped (None when absent or empty); a file there is an error."""
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise RequestError(f"form field {name!r} must be text, got a file")
    return value.strip() or None


def upload_of(form: FormData, name: str) -> tuple[BinaryIO, str]:
    """The image file in field ``name`` (not yet decoded: :func:`decode`) and what messages call it."""
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise RequestError(f"form field {name!r} must be an image file (multipart upload), got text")
    label = one_line(upload.filename or "the upload")
    if len(label) > NAME_CHARACTERS:
        label = label[:NAME_CHARACTERS] + "..."
    if not upload.size:
        raise RequestError(f"{label}: the file is empty")
    upload.file.seek(0)
    return upload.file, label


def decode(source: Path | BinaryIO, label: str, limits: UploadLimits) -> Image.Image:
    """An image file of the server's (a run's image: a path) or a client's (an upload: an open file) decoded
    by :func:`occlens.core.image.read_image` within the server's limits, its messages naming ``label``. Runs on
    the decoding queue's threads (:class:`~occlens.serve.queue.DecodeQueue`)."""
    return read_image(source, max_pixels=limits.max_pixels, max_decode_mb=limits.max_decode_mb, name=label,
                      refuse=NOT_DECODED)  # fmt: skip
