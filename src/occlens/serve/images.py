"""The images a request names, as the model takes them: the image to explain (an upload, or a run's image by
its key) with its known true class, the region to occlude (a box or a mask image), a run image's thumbnail."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from PIL import Image, ImageOps
from starlette.datastructures import FormData

from ..core.errors import ImageError, OcclensError, first_line
from ..core.image import jpeg_bytes
from . import work
from .errors import RequestError, restated
from .fields import box_of, truth_of
from .uploads import read_file, text_field, uploaded_image
from .viewer import UploadLimits, Viewer

THUMB = 160  # pixels: a run image's thumbnail, square


async def image_of(viewer: Viewer, form: FormData) -> tuple[torch.Tensor, str, int | tuple | None]:
    """The image the request names (an upload in ``image``, or a run's image by ``key``) as the model's input
    (C x H x W in [0, 1]), its name and its known true class (a tuple: a multi-label truth)."""
    upload, key = form.get("image"), text_field(form, "key")
    if (upload is None) == (key is None):
        which = "both" if upload is not None else "neither"
        raise RequestError(f"give an image file in field 'image' or a run's image in field 'key' (got {which})")
    label = None
    if key is not None:
        if viewer.run is None:
            raise RequestError("field 'key' names a run's image, and this server shows no run (occlens serve RUN_DIR)")
        record = viewer.run.record(key)
        path = viewer.run.image_path(record)
        pil, name = await asyncio.to_thread(read_file, path, viewer.limits), str(path)
        label = record.label if record.true_labels is None else record.true_labels
    else:
        pil, name = await uploaded_image(form, "image", viewer.limits)
    given = text_field(form, "label")
    if given is not None:
        label = truth_of(given, viewer.model.labels)
    try:
        x = await asyncio.to_thread(viewer.model.preprocess, pil)
    except OcclensError as err:
        raise restated(err, f"{name}: {err.args[0]}") from None
    except ValueError as err:
        raise ImageError(f"{name}: {first_line(err)}") from None
    return x, name, label


async def mask_of(viewer: Viewer, form: FormData, height: int, width: int) -> np.ndarray:
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
    pil, name = await uploaded_image(form, "mask", viewer.limits)
    if pil.size != (width, height):
        raise RequestError(
            f"{name}: the mask is {pil.width}x{pil.height}; it must be the input's size, {width}x{height}"
        )
    mask = np.asarray(pil.convert("L")) > 0
    if not mask.any():
        raise RequestError(f"{name}: the mask is all zero; non-zero pixels mark the region to occlude")
    return mask


def thumbnail(path, limits: UploadLimits) -> bytes:
    """A run's image at ``path`` as a square JPEG thumbnail, THUMB pixels wide."""
    return jpeg_bytes(ImageOps.fit(read_file(path, limits), (THUMB, THUMB), Image.Resampling.BICUBIC))
