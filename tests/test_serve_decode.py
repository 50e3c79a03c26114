"""The one decode path (``occlens.core.image.read_image``) that the command, Python and ``occlens serve`` share:
it converts a strip of rows at a time, rotations included, and must give the very pixels Pillow's whole-image
operations give, for every pixel mode and EXIF orientation; an upright RGB file is returned as decoded (no
copy); the memory it takes is checked from the header before any pixel is decoded.

Peak memory itself is measured, not asserted, by ``benchmarks/serve_memory.py``.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageOps

import occlens.core.image as image
from occlens.core.errors import ImageError, TooLarge
from occlens.core.image import decode_cost, read_image, to_rgb

W, H = 37, 23  # odd, rectangular


def reference(img: Image.Image) -> Image.Image:
    """RGB the way Pillow does it on the whole image: EXIF rotation, 16-bit and float scaled by the range they use,
    transparency over white, then ``convert("RGB")``."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        peak = float(a.max())
        top = (
            1.0
            if img.mode == "F" and peak <= 1
            else 65535.0
            if img.mode.startswith("I;16") or 255 < peak <= 65535
            else 255.0
            if peak <= 255
            else peak
        )
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert("RGB")


def images():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    return {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb[..., 0]),
        "1": Image.fromarray(rgb[..., 0] > 128),
        "P": palette,
        "P transparent": transparent,
        "RGBA": Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8)),
        "LA": Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8)).convert("LA"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (H, W), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(0, 100_000, (H, W), dtype=np.int32)),
        "F": Image.fromarray(rng.random((H, W), dtype=np.float32)),
        "F wide": Image.fromarray(rng.random((H, W), dtype=np.float32) * 300),
    }


@pytest.mark.parametrize("orientation", range(1, 9))
def test_strips_give_the_whole_images_pixels_for_every_mode_and_orientation(monkeypatch, orientation):
    monkeypatch.setattr(image, "STRIP_PIXELS", 97)  # strips of 2 rows and an odd last one
    for name, img in images().items():
        ours, theirs = img.copy(), img.copy()
        ours.getexif()[0x0112] = orientation
        theirs.getexif()[0x0112] = orientation
        got, want = to_rgb(ours), reference(theirs)
        assert got.mode == "RGB" and got.size == want.size, (name, got.size, want.size)
        assert np.array_equal(np.asarray(got), np.asarray(want)), (name, orientation)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_files_of_every_orientation_decode_as_pillow_turns_them(monkeypatch, fmt):
    monkeypatch.setattr(image, "STRIP_PIXELS", 97)
    for (name, img), orientation in itertools.product(images().items(), (1, 3, 6, 8)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        try:
            img.save(buffer, fmt, exif=exif.tobytes())
        except (OSError, ValueError, KeyError):  # a mode the format cannot store
            continue
        got = read_image(io.BytesIO(buffer.getvalue()), name="upload")
        want = reference(Image.open(io.BytesIO(buffer.getvalue())))
        assert np.array_equal(np.asarray(got), np.asarray(want)), (fmt, name, orientation)


def test_an_upright_rgb_image_is_not_copied():
    """The decoded image is what comes back (the old path made three copies of it: 1.2 GB for 88 megapixels)."""
    img = images()["RGB"]
    assert to_rgb(img) is img


def test_the_budget_is_checked_from_the_header_before_decoding():
    """A 20000 x 20000 1-bit PNG (a 50 KB file) would take 1.9 GB to decode to RGB: refused with one line naming the
    budget, before a pixel is decoded (the pixel limit lifted to let it through to the budget)."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    with pytest.raises(TooLarge) as err:
        read_image(io.BytesIO(buffer.getvalue()), max_pixels=0, max_decode_mb=512, name="bomb.png")
    message = str(err.value)
    assert (
        message.startswith("bomb.png: decoding this 20000x20000 1 PNG image takes about 1931 MB")
        and "\n" not in message
    )
    assert err.value.option == "max_decode_mb" and "over the memory budget of 512 MB" in message


def test_costs_follow_the_pixel_mode():
    """Per pixel: RGB is stored in 4 bytes and needs no copy; 8-bit grayscale 1 and its RGB copy 4; RGBA, CMYK and
    float 4 and 4; 16-bit 2 and 4; a progressive JPEG adds its coefficients."""
    size = (4000, 4000)
    pixels = size[0] * size[1]
    costs = {}
    for mode in ("RGB", "L", "RGBA", "CMYK", "F", "I;16"):
        costs[mode] = decode_cost(Image.new(mode, size)) - image.DECODER_BYTES
    assert costs["RGB"] == 4 * pixels
    assert costs["L"] == 5 * pixels + image.STRIP_PIXELS * image.STRIP_BYTES
    assert costs["RGBA"] == costs["CMYK"] == 8 * pixels + image.STRIP_PIXELS * image.STRIP_BYTES
    assert costs["F"] == 8 * pixels + image.STRIP_PIXELS * image.WIDE_STRIP_BYTES
    assert costs["I;16"] == 6 * pixels + image.STRIP_PIXELS * image.WIDE_STRIP_BYTES
    for progressive, extra in ((False, 0), (True, 6 * pixels)):
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, "JPEG", progressive=progressive, subsampling=0)
        opened = Image.open(io.BytesIO(buffer.getvalue()))
        assert decode_cost(opened) - image.DECODER_BYTES == 4 * pixels + extra


def test_a_refused_format_is_named():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "ICO")
    assert read_image(io.BytesIO(buffer.getvalue())).size == (16, 16)
    with pytest.raises(ImageError, match="icon.ico: not an image Pillow can read .*ICO files are not taken here"):
        read_image(io.BytesIO(buffer.getvalue()), name="icon.ico", refuse=frozenset({"ICO", "EPS"}))
