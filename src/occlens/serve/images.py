"""The images a request names, as the model takes them: the image to explain (an upload, or a run's image by
its key) with its known true class, the region to occlude (a box or a mask image), a run image's thumbnail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from starlette.datastructures import FormData

from ..core.errors import ImageError, OcclensError, first_line
from ..core.image import jpeg_bytes
from ..engines.memory import give_back_freed
from . import work
from .errors import RequestError, restated
from .fields import box_of, truth_of
from .queue import DecodeQueue
from .uploads import decode, text_field, upload_of
from .viewer import UploadLimits, Viewer

THUMB = 160  # pixels: a run image's thumbnail, square
LARGE_PIXELS = 16_000_000  # an image this large (64 MB as RGB) gives its memory back to the OS once done


async def image_of(
    viewer: Viewer, form: FormData, decodes: DecodeQueue
) -> tuple[torch.Tensor, str, int | tuple | None]:
    """The image the request names (an upload in ``image``, or a run's image by ``key``) as the model's input
    (C x H x W in [0, 1]), its name and its known true class (a tuple: a multi-label truth). Decoded and
    preprocessed in one job of the decoding queue, so the full-size image lives only there."""
    upload, key = form.get("image"), text_field(form, "key")
    if (upload is None) == (key is None):
        which = "both" if upload is not None else "neither"
        raise RequestError(f"give an image file in field 'image' or a run's image in field 'key' (got {which})")
    label = None
    source: Path | BinaryIO
    if key is not None:
        if viewer.run is None:
            raise RequestError("field 'key' names a run's image, and this server shows no run (occlens serve RUN_DIR)")
        record = viewer.run.record(key)
        source = viewer.run.image_path(record)
        name = str(source)
        label = record.label if record.true_labels is None else record.true_labels
    else:
        source, name = upload_of(form, "image")
    given = text_field(form, "label")
    if given is not None:
        label = truth_of(given, viewer.model.labels)
    x = await decodes.run(model_input, source, name, viewer)
    return x, name, label


def model_input(source: Path | BinaryIO, name: str, viewer: Viewer) -> torch.Tensor:
    """The image file decoded and preprocessed to the model's input (a job of the decoding queue)."""
    with decoded(source, name, viewer.limits) as pil:
        try:
            return viewer.model.preprocess(pil[0])
        except OcclensError as err:
            raise restated(err, f"{name}: {err.args[0]}") from None
        except ValueError as err:
            raise ImageError(f"{name}: {first_line(err)}") from None


@contextmanager
def decoded(source: Path | BinaryIO, name: str, limits: UploadLimits) -> Iterator[list[Image.Image]]:
    """The image decoded (:func:`~occlens.serve.uploads.decode`), in a list of one that the job reads it from
    and this empties when the job is done; a large image's memory is then handed back to the OS (the occlens
    command keeps freed blocks for its batches, :mod:`occlens.engines.memory`: not a decoding's)."""
    held = [decode(source, name, limits)]
    large = held[0].width * held[0].height >= LARGE_PIXELS
    try:
        yield held
    finally:
        held.clear()
        if large:
            give_back_freed()


async def mask_of(viewer: Viewer, form: FormData, height: int, width: int, decodes: DecodeQueue) -> np.ndarray:
    """The region to occlude: ``box`` (left,top,right,bottom) or ``mask`` (an image the model's input size,
    non-zero = occluded)."""
    box, upload = box_of(form, height, width), form.get("mask")
    if (box is None) == (upload is None):
        both = "one, not both" if box is not None else "one of them"
        raise RequestError(
            f"give the region to occlude: field 'box' (left,top,right,bottom) or 'mask' (an image), {both}"
        )
    if box is not None:
        return work.box_mask(box, height, width)
    source, name = upload_of(form, "mask")
    mask: np.ndarray = await decodes.run(mask_from, source, name, viewer.limits, height, width)
    return mask


def mask_from(source: BinaryIO, name: str, limits: UploadLimits, height: int, width: int) -> np.ndarray:
    """The mask image decoded to a boolean H x W array (a job of the decoding queue)."""
    with decoded(source, name, limits) as pil:
        if pil[0].size != (width, height):
            raise RequestError(
                f"{name}: the mask is {pil[0].width}x{pil[0].height}; it must be the input's size, {width}x{height}"
            )
        mask = np.asarray(pil[0].convert("L")) > 0
    if not mask.any():
        raise RequestError(f"{name}: the mask is all zero; non-zero pixels mark the region to occlude")
    return mask


def thumbnail(path: Path, limits: UploadLimits) -> bytes:
    """A run's image at ``path`` as a square JPEG thumbnail, THUMB pixels wide (a job of the decoding queue)."""
    with decoded(path, str(path), limits) as pil:
        return jpeg_bytes(ImageOps.fit(pil[0], (THUMB, THUMB), Image.Resampling.BICUBIC))
