"""The Volume and Bands wrappers and intensity windows: declared, checked, recorded; every error one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import occlens
from occlens import ConfigError, ImageError, Volume
from occlens.core.fill import baseline
from occlens.core.image import to_tensor
from occlens.core.intensity import CT_PRESETS, IntensityWindow, check_window


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_1xDxHxW_tensor_without_the_wrapper_stays_a_2d_image():
    x = torch.rand(1, 5, 6, 7)
    assert to_tensor(x).shape == (5, 6, 7)  # D channels of a 6 x 7 image
    assert Volume(x).shape == (1, 5, 6, 7)  # declared: one channel of 5 x 6 x 7 voxels


def test_volume_shapes_channels_and_no_copy_of_the_raw_intensities():
    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    v = Volume(hu, intensity="ct-soft-tissue")
    assert v.shape == (1, 4, 5, 6) and v.size == (4, 5, 6) and v.channels == 1
    assert v.array.dtype == torch.int16 and np.shares_memory(v.array.numpy(), hu)
    three = Volume(torch.rand(3, 2, 4, 5))
    assert three.shape == (3, 2, 4, 5) and three.channels == 3
    assert Volume(np.zeros((2, 3, 4), np.uint16), intensity=(0, 1)).array.dtype == torch.int32  # widened, exact
    raw = torch.tensor([[[0, 1000, 65535]]], dtype=torch.uint16)
    np.testing.assert_allclose(Volume(raw, intensity=(0, 1000)).unit().flatten().numpy(), [0, 1, 1])


@pytest.mark.parametrize("shape", [(4, 5), (1, 2, 3, 4, 5), (0, 3, 4)])
def test_volume_of_the_wrong_rank_is_one_line(shape):
    with pytest.raises(ImageError, match="C x D x H x W") as err:
        Volume(np.zeros(shape, np.float32))
    one_line(err)


def test_spacing_and_affine():
    v = Volume(np.zeros((4, 5, 6), np.float32), spacing=(2.5, 0.7, 0.8))
    np.testing.assert_array_equal(v.affine, np.diag([2.5, 0.7, 0.8, 1.0]))
    affine = np.array([[0, 0, -0.8, 10], [0, 0.7, 0, -5], [2.5, 0, 0, 3], [0, 0, 0, 1]], dtype=float)
    w = Volume(np.zeros((4, 5, 6), np.float32), affine=affine)
    assert w.spacing == pytest.approx((2.5, 0.7, 0.8))
    np.testing.assert_array_equal(w.affine, affine)
    assert Volume(np.zeros((2, 2, 2), np.float32), spacing=3).spacing == (3.0, 3.0, 3.0)
    assert Volume(np.zeros((2, 2, 2), np.float32)).spacing == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="disagrees with the affine") as err:
        Volume(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 1), affine=affine)
    one_line(err)


@pytest.mark.parametrize("spacing", [(1, 2), (1, 0, 1), (1, float("nan"), 1), "1mm", -1])
def test_bad_spacing(spacing):
    with pytest.raises(ConfigError, match="spacing must be three positive numbers") as err:
        Volume(np.zeros((2, 2, 2), np.float32), spacing=spacing)
    one_line(err)


@pytest.mark.parametrize("affine", [np.eye(3), np.zeros((4, 4)), [[1, 0, 0, 0]] * 4, "eye"])
def test_bad_affine(affine):
    with pytest.raises(ConfigError, match="affine must be a 4 x 4 matrix") as err:
        Volume(np.zeros((2, 2, 2), np.float32), affine=affine)
    one_line(err)


def test_names_per_channel():
    assert Volume(np.zeros((2, 2, 2, 2), np.float32), names=["T1", "T2"]).names == ("T1", "T2")
    with pytest.raises(ConfigError, match="names has 1 entries for 2 channels"):
        Volume(np.zeros((2, 2, 2, 2), np.float32), names=["T1"])
    with pytest.raises(ConfigError, match="one name per band"):
        occlens.Bands(np.zeros((3, 4, 4), np.float32), names=["B2", "B3"])


# ---- intensity windows -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "width", "level"), [(k, *v) for k, v in CT_PRESETS.items()])
def test_ct_presets_map_level_to_half_and_clip(name, width, level):
    hu = np.array([level - width, level - width / 2, level - width / 4, level, level + width / 2, 3000], np.int16)
    v = Volume(hu.reshape(1, 1, 6), intensity=name)
    np.testing.assert_allclose(v.unit().flatten().numpy(), [0, 0, 0.25, 0.5, 1, 1], atol=1e-6)
    assert v.applied_intensity.to_json() == {"name": name, "low": level - width / 2, "high": level + width / 2,
                                          "width": width, "level": level}  # fmt: skip


def test_the_ct_presets_are_the_declared_ones():
    assert CT_PRESETS == {"ct-soft-tissue": (400, 40), "ct-lung": (1500, -600), "ct-bone": (1800, 400),
                          "ct-brain": (80, 40)}  # fmt: skip


def test_gray_fill_is_the_window_middle():
    """Fills stay in [0, 1]: gray, 0.5, is the intensity at the window's level."""
    v = Volume(np.linspace(-1000, 1000, 60).reshape(3, 4, 5), intensity="ct-lung")
    gray = baseline(v.unit(), "gray")
    window = v.applied_intensity
    assert float(gray.unique()) * window.width + window.low == pytest.approx(-600)


def test_mr_percentiles_are_taken_from_the_volume_and_recorded():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 300.0, size=(6, 7, 8)).astype(np.float32)
    v = Volume(data, intensity="mr")
    low, high = np.percentile(data, [0.5, 99.5])
    window = v.applied_intensity
    assert (window.low, window.high) == pytest.approx((low, high))
    np.testing.assert_allclose(v.unit().numpy()[0], np.clip((data - low) / (high - low), 0, 1), atol=1e-6)
    recorded = json.loads(json.dumps(v.to_json()))
    assert recorded["intensity"]["percentiles"] == [0.5, 99.5] and recorded["intensity"]["name"] == "mr"
    again = check_window(recorded["intensity"])  # the record reads back as the window applied, bounds and all
    assert (again.low, again.high) == pytest.approx((low, high))
    torch.testing.assert_close(again.apply(data), v.unit()[0])


@pytest.mark.parametrize(
    ("given", "low", "high"),
    [((-100, 300), -100, 300), ([0.0, 4095.0], 0, 4095), ({"width": 400, "level": 40}, -160, 240),
     ({"low": -5, "high": 5}, -5, 5), ("CT_Lung", -1350, 150)],
)  # fmt: skip
def test_declared_windows(given, low, high):
    window = check_window(given)
    assert (window.low, window.high) == (low, high)
    assert window.level == (low + high) / 2


@pytest.mark.parametrize("given", ["ct-liver", (5, 5), (10, 0), (0, float("inf")), {"width": -1, "level": 0},
                                   {"percentiles": [60, 40]}, 3, (0, 1, 2)])  # fmt: skip
def test_bad_window_is_one_line(given):
    with pytest.raises(ConfigError, match="intensity") as err:
        Volume(np.zeros((2, 2, 2), np.float32), intensity=given)
    one_line(err)


def test_intensities_all_outside_the_window_are_refused():
    mr = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32) * 0.01  # not Hounsfield units
    with pytest.raises(ImageError, match=r"all intensities .* lie outside the window ct-bone \[-500, 1300\]") as err:
        Volume(mr * 0 - 2000, intensity="ct-bone").unit()
    one_line(err)
    with pytest.raises(ImageError, match="outside the window") as err:
        Volume(mr + 2000, intensity=(0, 100)).unit()


def test_without_a_window_intensities_must_be_in_unit_range():
    v = Volume(np.full((2, 3, 4), 0.25, np.float64))
    assert v.unit().dtype == torch.float32 and float(v.unit().max()) == 0.25 and v.applied_intensity is None
    with pytest.raises(ImageError, match=r"int16 values in \[-1024, 2000\].*intensity='ct-soft-tissue'") as err:
        Volume(np.array([-1024, 2000], np.int16).reshape(1, 1, 2)).unit()
    one_line(err)


def test_non_finite_and_constant_volumes_are_refused():
    data = np.zeros((2, 3, 4), np.float32)
    data[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        Volume(data, intensity=(0, 1)).unit()
    with pytest.raises(ImageError, match="constant"):
        Volume(np.ones((2, 3, 4), np.float32) * 7, intensity="mr").unit()


def test_window_record_is_json_and_explicit_window_round_trips():
    v = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), spacing=(3, 1, 1), intensity=(0, 23))
    record = json.loads(json.dumps(v.to_json()))
    assert record["kind"] == "volume" and record["shape"] == [1, 2, 3, 4] and record["spacing"] == [3, 1, 1]
    assert check_window(record["intensity"]) == IntensityWindow(0.0, 23.0)
    np.testing.assert_allclose(v.unit().numpy().ravel(), np.arange(24) / 23, atol=1e-7)


def test_bands_wrapper():
    reflectance = np.random.default_rng(2).integers(0, 10_000, size=(13, 8, 9)).astype(np.uint16)
    b = occlens.Bands(reflectance, intensity=(0, 10_000), names=[f"B{i}" for i in range(13)])
    assert b.shape == (13, 8, 9) and b.names[12] == "B12"
    np.testing.assert_allclose(b.unit().numpy(), reflectance / 10_000, atol=1e-6)
    assert json.loads(json.dumps(b.to_json()))["intensity"]["high"] == 10_000
    with pytest.raises(ImageError, match="C x H x W"):
        occlens.Bands(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("window", [None, (0.0, 1.0)])
def test_unit_never_changes_the_callers_array(window):
    data = torch.rand(2, 3, 4) * 0.5 + 0.25
    kept = data.clone()
    v = Volume(data, intensity=window)
    v.unit().mul_(0)  # even a caller writing into the result
    assert torch.equal(data, kept)


@pytest.mark.parametrize(
    "declared",
    [
        lambda: Volume(torch.rand(2, 3, 4)),
        lambda: occlens.Bands(torch.rand(3, 4)),
        lambda: Volume(torch.arange(60, dtype=torch.int16).reshape(3, 4, 5), intensity="mr"),  # percentiles, once
    ],
)
def test_writing_into_unit_leaves_the_next_call_unchanged(declared):
    given = declared()
    first = given.unit()
    kept = first.clone()
    first.mul_(0).add_(7)  # a caller writing into what unit() returned
    assert torch.equal(given.unit(), kept)
    assert given.unit() is not given.unit()
