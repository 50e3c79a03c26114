"""Input forms: every accepted way of passing the same picture gives the same image tensor and the same map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, uint8_image
from PIL import Image

import occlens
from occlens.core.image import to_tensor

U8 = uint8_image(12, 17, 3, seed=5)  # H x W x C
EXPECTED = torch.from_numpy(U8.astype(np.float64) / 255.0).permute(2, 0, 1)  # C x H x W, by hand, float64


def _png(tmp_path, array, mode=None):
    path = tmp_path / "picture.png"
    Image.fromarray(array, mode).save(path)
    return path


FORMS = {
    "hwc-uint8": lambda tmp: U8,
    "hwc-float32": lambda tmp: U8.astype(np.float32) / 255,
    "hwc-float64": lambda tmp: U8.astype(np.float64) / 255,
    "hwc-uint16": lambda tmp: U8.astype(np.uint16) * 257,
    "hwc-non-contiguous": lambda tmp: np.asfortranarray(U8),
    "chw-tensor-float": lambda tmp: torch.from_numpy(U8).permute(2, 0, 1).float() / 255,
    "chw-tensor-uint8": lambda tmp: torch.from_numpy(U8).permute(2, 0, 1),
    "1chw-tensor": lambda tmp: (torch.from_numpy(U8).permute(2, 0, 1).float() / 255)[None],
    "pil": lambda tmp: Image.fromarray(U8),
    "path-str": lambda tmp: str(_png(tmp, U8)),
    "path-pathlib": lambda tmp: _png(tmp, U8),
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_to_tensor_forms(tmp_path, form):
    t = to_tensor(form(tmp_path))
    assert t.dtype == torch.float32 and t.shape == (3, 12, 17)
    np.testing.assert_allclose(t.numpy(), EXPECTED.numpy(), rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def reference_result():
    return occlens.explain(TinyConvNet(), U8, patch=(4, 5), stride=(3, 4))


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_all_forms_give_the_same_map(tmp_path, form, reference_result):
    result = occlens.explain(TinyConvNet(), form(tmp_path), patch=(4, 5), stride=(3, 4))
    assert result.predicted == reference_result.predicted
    assert result.pixel_map.shape == (12, 17)
    np.testing.assert_allclose(result.pixel_map, reference_result.pixel_map, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.delta, reference_result.delta, rtol=0, atol=1e-6)


def test_uint16_uses_the_full_16_bit_range():
    a = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    t = to_tensor(a)
    np.testing.assert_allclose(t[0].numpy(), [[0.0, 1.0], [32768 / 65535, 1 / 255]], atol=1e-7)


GRAY = U8[:, :, 1]


@pytest.mark.parametrize(
    "form",
    [
        lambda: GRAY,
        lambda: GRAY[:, :, None],
        lambda: GRAY.astype(np.float32) / 255,
        lambda: torch.from_numpy(GRAY),
        lambda: torch.from_numpy(GRAY)[None],
    ],
    ids=["hw-uint8", "hw1-uint8", "hw-float", "hw-tensor", "1hw-tensor"],
)
def test_grayscale_with_a_one_channel_model(form):
    model = TinyConvNet(channels=1)
    result = occlens.explain(model, form(), patch=(4, 5))
    expected = occlens.explain(model, torch.from_numpy(GRAY.astype(np.float32) / 255)[None], patch=(4, 5))
    assert to_tensor(form()).shape == (1, 12, 17)
    np.testing.assert_allclose(result.delta, expected.delta, rtol=0, atol=1e-6)
    assert result.grid.height == 12 and result.grid.width == 17


def test_grayscale_png_becomes_rgb(tmp_path):
    path = _png(tmp_path, GRAY, "L")
    t = to_tensor(path)
    assert t.shape == (3, 12, 17)
    for c in range(3):
        np.testing.assert_allclose(t[c].numpy(), GRAY / 255.0, atol=1e-7)


def test_rgba_png_is_composited_over_white(tmp_path):
    rgba = np.dstack([U8, np.zeros((12, 17), np.uint8)])  # fully transparent
    t = to_tensor(_png(tmp_path, rgba, "RGBA"))
    assert t.shape == (3, 12, 17) and torch.all(t == 1.0)


def test_non_square_image_keeps_orientation():
    """A tall image stays tall: H x W x C numpy -> C x H x W, no transposition of the map."""
    tall = uint8_image(17, 5, 3, seed=1)
    t = to_tensor(tall)
    assert t.shape == (3, 17, 5)
    assert t[2, 16, 0] == pytest.approx(tall[16, 0, 2] / 255, abs=1e-7)
    result = occlens.explain(TinyConvNet(), tall, patch=(4, 2))
    assert result.delta.shape == (5, 3) and result.pixel_map.shape == (17, 5)


def test_to_tensor_copies():
    a = U8.astype(np.float32) / 255
    t = to_tensor(a)
    t += 1
    np.testing.assert_allclose(a, U8.astype(np.float32) / 255)
    x = torch.rand(3, 4, 5)
    y = to_tensor(x)
    y.zero_()
    assert x.sum() > 0
