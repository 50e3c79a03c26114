"""Fills: each baseline image is what DESIGN.md §1 says, and it is what the model actually sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Recorder, TinyConvNet, brute_windows, random_image

import occlens
from occlens import ConfigError
from occlens.core.fill import baseline, check_fill


def np_gaussian_blur(image: np.ndarray, kernel: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Direct 2-D Gaussian convolution with replicated edges, loops over the kernel (independent reference)."""
    half = kernel // 2
    taps = np.arange(kernel) - half
    g = np.exp(-(taps**2) / (2 * sigma**2))
    k2 = np.outer(g, g) / np.outer(g, g).sum()
    padded = np.pad(image.astype(np.float64), ((0, 0), (half, half), (half, half)), mode="edge")
    out = np.zeros(image.shape, np.float64)
    for dy in range(kernel):
        for dx in range(kernel):
            out += k2[dy, dx] * padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
    return out


@pytest.fixture
def img():
    return random_image(3, 12, 17, seed=3)


def test_gray_is_half_everywhere(img):
    b = baseline(img, "gray")
    assert b.shape == img.shape and b.dtype == img.dtype
    assert torch.all(b == 0.5)


def test_black_is_zero(img):
    assert torch.all(baseline(img, "black") == 0)


def test_mean_is_per_channel_mean(img):
    b = baseline(img, "mean")
    expected = img.numpy().astype(np.float64).mean(axis=(1, 2))
    for c in range(3):
        np.testing.assert_allclose(b[c].numpy(), np.full((12, 17), expected[c]), atol=1e-6)
    assert not torch.allclose(b[0], b[1])  # really per channel, not one global mean


@pytest.mark.parametrize("value", [0.0, 0.25, 1.0])
def test_constant(img, value):
    assert torch.all(baseline(img, check_fill(value)) == value)


def test_per_channel_tuple(img):
    b = baseline(img, check_fill((0.1, 0.6, 0.9)))
    for c, v in enumerate((0.1, 0.6, 0.9)):
        assert torch.allclose(b[c], torch.full((12, 17), v))


def test_noise_is_seeded_reproducible_and_in_unit_interval(img):
    a = baseline(img, "noise", seed=7)
    assert a.shape == img.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, baseline(img, "noise", seed=7))
    assert not torch.equal(a, baseline(img, "noise", seed=8))
    # depends on the seed only, not on the image content; roughly uniform
    assert torch.equal(a, baseline(torch.zeros_like(img), "noise", seed=7))
    big = baseline(torch.zeros(3, 100, 100), "noise", seed=1)
    assert abs(float(big.mean()) - 0.5) < 0.02
    assert abs(float(big.std()) - (1 / 12) ** 0.5) < 0.02


def test_noise_seed_reaches_explain(img):
    net = TinyConvNet()
    a = occlens.explain(net, img, patch=4, fill="noise", seed=3)
    b = occlens.explain(net, img, patch=4, fill="noise", seed=3)
    c = occlens.explain(net, img, patch=4, fill="noise", seed=4)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert not np.allclose(a.delta, c.delta)


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_blur_preserves_a_constant_image(value):
    flat = torch.full((3, 12, 17), value)
    np.testing.assert_allclose(baseline(flat, "blur").numpy(), value, atol=1e-6)


def test_blur_is_a_gaussian_blur(img):
    b = baseline(img, "blur")
    assert b.shape == img.shape
    np.testing.assert_allclose(b.numpy(), np_gaussian_blur(img.numpy()), atol=1e-5)
    # smooths: less variance, mean roughly kept, values stay in [0, 1]
    assert float(b.std()) < 0.5 * float(img.std())
    np.testing.assert_allclose(b.mean(dim=(1, 2)).numpy(), img.mean(dim=(1, 2)).numpy(), atol=0.03)
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0


def test_blur_of_an_impulse_is_a_symmetric_bell():
    x = torch.zeros(1, 21, 21)
    x[0, 10, 10] = 1.0
    b = baseline(x, "blur")[0].numpy()
    assert np.unravel_index(b.argmax(), b.shape) == (10, 10)
    np.testing.assert_allclose(b, b.T, atol=1e-7)
    np.testing.assert_allclose(b, b[::-1, ::-1], atol=1e-7)
    np.testing.assert_allclose(b.sum(), 1.0, atol=1e-5)
    assert np.all(np.diff(b[10, 10:16]) < 0)  # decreasing away from the centre, out to the kernel radius 5
    assert np.all(b[10, 16:] == 0) and np.all(b[:5] == 0)  # and nothing beyond it


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("gray", "gray"),
        ("grey", "gray"),
        (" Gray ", "gray"),
        ("MEAN", "mean"),
        ("black", "black"),
        ("blur", "blur"),
        ("noise", "noise"),
        ("0.25", 0.25),
        (1, 1.0),
        (0, 0.0),
        (np.float32(0.5), 0.5),
        ([0.1, 0.2, 0.3], (0.1, 0.2, 0.3)),
        ((0.4,), 0.4),
    ],
)
def test_check_fill_canonical_forms(given, canonical):
    got = check_fill(given)
    assert got == canonical and type(got) is type(canonical)


FILLS = ["gray", "mean", "black", "blur", "noise", 0.3, (0.2, 0.5, 0.8)]


@pytest.mark.parametrize("fill", FILLS, ids=str)
def test_model_sees_image_outside_window_and_fill_inside(img, fill):
    """Every occluded copy given to the model is the image with exactly one window replaced by the fill."""
    patch, stride = (5, 4), (3, 3)
    model = Recorder(TinyConvNet())
    occlens.explain(model, img, patch=patch, stride=stride, fill=fill, seed=11, batch_size=4)
    fill_image = baseline(img, check_fill(fill), seed=11)
    windows, _, _ = brute_windows(12, 17, patch, stride)
    seen = model.occluded()
    assert torch.equal(model.batches[0][0], img)
    assert seen.shape == (len(windows), 3, 12, 17)
    for i, (t, b, left, right) in enumerate(windows):
        expected = img.clone()
        expected[:, t:b, left:right] = fill_image[:, t:b, left:right]
        assert torch.equal(seen[i], expected), f"window {i}"
    if fill == "gray":
        assert torch.all(seen[0][:, 0:5, 0:4] == 0.5)


@pytest.mark.parametrize("fill", ["sparkle", "", 1.5, -0.1, float("nan"), float("inf"), (0.1, 1.2, 0.3), True, None])
def test_bad_fill_is_config_error(fill):
    with pytest.raises(ConfigError):
        check_fill(fill)
