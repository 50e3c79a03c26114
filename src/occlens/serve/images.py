"""The images a request names, as the model takes them: the image to explain (an upload, or a run's image by
its key) with its known true class, the region to occlude (a box or a mask image), a run image's thumbnail."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from starlette.datastructures import FormData

from ..core.errors import ImageError, OcclensError, TooLarge, first_line, option
from ..core.image import jpeg_bytes
from ..core.medical import nibabel, read_volume
from ..core.volume import Volume
from ..engines.memory import give_back_freed
from ..volumes import NIFTI  # an upload named so is a volume
from . import work
from .errors import RequestError, restated
from .fields import box_of, truth_of
from .queue import DecodeQueue
from .uploads import decode, text_field, upload_of
from .viewer import UploadLimits, Viewer, takes_volumes

THUMB = 160  # pixels: a run image's thumbnail, square
LARGE_PIXELS = 16_000_000  # an image this large (64 MB as RGB) gives its memory back to the OS once done


async def image_of(
    viewer: Viewer, form: FormData, decodes: DecodeQueue
) -> tuple[torch.Tensor | Volume, str, int | tuple | None]:
    """The image the request names (an upload in ``image``, or a run's image by ``key``) as the model's input
    (C x H x W in [0, 1]; an uploaded NIfTI file: a :class:`~occlens.core.volume.Volume`, for a volume model), its
    name and its known true class (a tuple: a multi-label truth). Decoded and preprocessed in one job of the
    decoding queue, so the full-size image lives only there."""
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
    x: torch.Tensor | Volume
    if name.lower().endswith(NIFTI):
        x = await decodes.run(volume_input, source, name, viewer)
    elif takes_volumes(viewer.model):
        raise RequestError(f"{name}: this server's model is a volume model; upload a NIfTI volume (.nii, .nii.gz)")
    else:
        x = await decodes.run(model_input, source, name, viewer)
    return x, name, label


def volume_input(source: Path | BinaryIO, name: str, viewer: Viewer) -> Volume:
    """An uploaded NIfTI file as a :class:`~occlens.core.volume.Volume` (a job of the decoding queue): written to
    a temporary file (nibabel reads files), its voxels counted from the header against the pixel limit before
    they are read."""
    if not takes_volumes(viewer.model):
        raise RequestError(f"{name} is a volume (NIfTI); this server's model takes 2-D images: serve a volume "
                           f"model (occlens serve --model MODEL, its description's input_size [depth, height, "
                           f"width])")  # fmt: skip
    suffix = next(s for s in NIFTI if name.lower().endswith(s))
    with tempfile.TemporaryDirectory(prefix="occlens-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        if isinstance(source, Path):
            shutil.copyfile(source, path)
        else:
            with open(path, "wb") as out:
                shutil.copyfileobj(source, out)
        try:
            shape = nibabel().load(path).shape
        except OcclensError:
            raise
        except Exception as err:  # nibabel's own refusal of a file that is not NIfTI
            raise ImageError(f"{name} is not a NIfTI file nibabel can read: {first_line(err)}") from None
        voxels = int(np.prod(shape[:3]))
        limit = Image.MAX_IMAGE_PIXELS if viewer.limits.max_pixels is None else viewer.limits.max_pixels
        if limit and voxels > limit:  # 0: no limit, as for images
            raise TooLarge(f"{name} has {voxels} voxels ({'x'.join(map(str, shape))}), over the server's limit of "
                           f"{limit}; send a smaller volume, or raise the limit ({option('max_pixels')})",
                           option="max_pixels", value=voxels, expected=f"at most {limit} voxels")  # fmt: skip
        try:
            return read_volume(path)
        except OcclensError as err:
            raise restated(err, f"{name}: {err.args[0]}".replace(str(path), name)) from None


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
