"""3-D windows (VolumeGrid) against brute-force loops, on non-cubic volumes and windows; the 2-D grid's
contract unchanged; fills of volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import brute_pixel_map
from hypothesis import given, settings
from hypothesis import strategies as st

from occlens import ConfigError, Grid, VolumeGrid
from occlens.core.fill import baseline, gaussian_blur, gaussian_blur3d
from occlens.core.grid import grid_for, grid_from_json, triple


def brute_windows3d(shape, patch, stride):
    """Windows (front, back, top, bottom, left, right) in raster order (depth, rows, columns), walked by loops."""

    def starts(size, p, s):
        out = [0]
        while out[-1] + p < size:  # the last window must reach the edge
            out.append(out[-1] + s)
        return out

    axes = [starts(n, p, s) for n, p, s in zip(shape, patch, stride, strict=True)]
    windows = [
        (f, min(f + patch[0], shape[0]), t, min(t + patch[1], shape[1]), left, min(left + patch[2], shape[2]))
        for f in axes[0]
        for t in axes[1]
        for left in axes[2]
    ]
    return windows, tuple(len(a) for a in axes)


def brute_voxel_map(values, shape, patch, stride):
    windows, _ = brute_windows3d(shape, patch, stride)
    total, count = np.zeros(shape), np.zeros(shape)
    for v, (f, b, t, bo, left, right) in zip(np.asarray(values).reshape(-1), windows, strict=True):
        total[f:b, t:bo, left:right] += v
        count[f:b, t:bo, left:right] += 1
    return total / count


@st.composite
def geometries3d(draw, max_size: int = 12):
    shape = tuple(draw(st.integers(1, max_size)) for _ in range(3))
    patch = tuple(draw(st.integers(1, n)) for n in shape)
    stride = tuple(draw(st.integers(1, p)) for p in patch)
    return shape, patch, stride


@settings(max_examples=200, deadline=None)
@given(geometries3d(), st.integers(0, 2**32 - 1))
def test_volume_grid_matches_brute_force(geom, seed):
    shape, patch, stride = geom
    grid = VolumeGrid(*shape, patch, stride)
    expected, counts = brute_windows3d(shape, patch, stride)
    formula = tuple(math.ceil((n - p) / s) + 1 for n, p, s in zip(shape, patch, stride, strict=True))
    assert grid.shape == counts == formula
    assert grid.size == len(expected) and grid.image_shape == shape
    assert [tuple(int(v) for v in w) for w in grid.windows()] == expected
    assert [grid.window(i) for i in range(grid.size)] == expected
    assert sorted(w[::2] for w in expected) == [w[::2] for w in expected]  # raster: depth, then rows, then columns
    count = np.zeros(shape, np.int64)
    for f, b, t, bo, left, right in expected:
        count[f:b, t:bo, left:right] += 1
    np.testing.assert_array_equal(grid.coverage(), count)
    assert grid.coverage().min() >= 1
    values = np.random.default_rng(seed).normal(size=grid.shape)
    got = grid.voxel_map(values)
    assert got.shape == shape
    np.testing.assert_allclose(got, brute_voxel_map(values, shape, patch, stride), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grid.voxel_map(values, dtype=np.float32), got, rtol=0, atol=1e-5)
    assert grid.voxel_map(values, dtype=np.float32).dtype == np.float32


def test_window_index_is_depth_then_rows_then_columns():
    grid = VolumeGrid.build(7, 9, 11, (3, 4, 5), (2, 3, 4))  # every axis clipped at its end
    assert grid.shape == (3, 3, 3)
    planes, rows, cols = grid.shape
    for p in range(planes):
        for r in range(rows):
            for c in range(cols):
                f, b, t, bo, left, right = grid.window((p * rows + r) * cols + c)
                assert (f, t, left) == (2 * p, 3 * r, 4 * c)
                assert (b, bo, right) == (min(2 * p + 3, 7), min(3 * r + 4, 9), min(4 * c + 5, 11))
    assert grid.window(grid.size - 1)[1::2] == (7, 9, 11)  # the last window ends at every edge
    with pytest.raises(IndexError):
        grid.window(grid.size)
    with pytest.raises(IndexError):
        grid.window(-1)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_partition_voxel_map_is_nearest_neighbour_blow_up(planes, rows, cols, side, seed):
    patch = (side, side + 1, 2)
    grid = VolumeGrid.build(planes * patch[0], rows * patch[1], cols * patch[2], patch)
    assert grid.shape == (planes, rows, cols) and grid.stride == grid.patch
    values = np.random.default_rng(seed).normal(size=grid.shape)
    np.testing.assert_array_equal(grid.voxel_map(values), np.kron(values, np.ones(patch)))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 15), st.integers(1, 15), st.integers(1, 6), st.integers(0, 2**32 - 1), st.data())
def test_a_window_through_the_whole_depth_is_the_2d_grid(height, width, depth, seed, data):
    """Windows spanning the whole depth: the voxel map is the 2-D pixel map on every slice."""
    ph, pw = data.draw(st.integers(1, height)), data.draw(st.integers(1, width))
    sh, sw = data.draw(st.integers(1, ph)), data.draw(st.integers(1, pw))
    grid2 = Grid(height, width, (ph, pw), (sh, sw))
    grid3 = VolumeGrid(depth, height, width, (depth, ph, pw), (depth, sh, sw))
    assert grid3.shape == (1, *grid2.shape)
    values = np.random.default_rng(seed).normal(size=grid2.shape)
    expected = grid2.pixel_map(values)
    np.testing.assert_allclose(grid3.voxel_map(values[None]), np.broadcast_to(expected, (depth, height, width)),
                               rtol=0, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(expected, brute_pixel_map(values, height, width, (ph, pw), (sh, sw)), atol=1e-12)
    np.testing.assert_array_equal(grid3.coverage()[0], grid2.coverage())


def test_2d_grid_fields_and_json_are_unchanged():
    grid = Grid.build(12, 17, (5, 3), (2, 3))
    assert [f for f in Grid.__dataclass_fields__] == ["height", "width", "patch", "stride"]
    assert grid.to_json() == {"height": 12, "width": 17, "rows": 5, "cols": 6, "patch": [5, 3], "stride": [2, 3]}
    assert grid.shape == (5, 6) and grid.image_shape == (12, 17)
    assert grid_from_json(json.loads(json.dumps(grid.to_json()))) == grid


def test_volume_grid_json_round_trip():
    grid = VolumeGrid.build(10, 20, 30, (4, 8, 16), (3, 8, 8))
    d = json.loads(json.dumps(grid.to_json()))
    assert d == {"depth": 10, "height": 20, "width": 30, "planes": 3, "rows": 3, "cols": 3, "patch": [4, 8, 16],
                 "stride": [3, 8, 8]}  # fmt: skip
    assert grid_from_json(d) == grid


def test_grid_for_picks_the_rank_and_voxel_map_is_also_called_pixel_map():
    assert grid_for((12, 17), 4) == Grid.build(12, 17, 4)
    grid = grid_for((6, 12, 17), (2, 4, 4), (1, 2, 4))
    assert grid == VolumeGrid(6, 12, 17, (2, 4, 4), (1, 2, 4))
    values = np.arange(grid.size, dtype=np.float64).reshape(grid.shape)
    np.testing.assert_array_equal(grid.pixel_map(values), grid.voxel_map(values))
    with pytest.raises(ConfigError, match="volume"):
        grid_for((3, 4, 5, 6), 2)


@pytest.mark.parametrize(
    ("patch", "stride", "words"),
    [
        ((4, 4), None, "three ints"),  # a pair for a volume
        ((4, 4, 4, 4), None, "three ints"),
        ((4, 4, True), None, "three ints"),
        ((7, 4, 4), None, "larger than the 6x12x17 volume"),
        ((2, 4, 18), None, "larger than"),
        ((0, 4, 4), None, "at least 1"),
        ((2, 4, 4), (1, 0, 2), "at least 1"),
        ((2, 4, 4), (3, 4, 4), "stride 3x4x4 is larger than patch 2x4x4"),
        ((2, 4, 4), (2, 4), "three ints"),
    ],
)
def test_invalid_3d_geometry_is_one_line_config_error(patch, stride, words):
    with pytest.raises(ConfigError, match=words) as err:
        VolumeGrid.build(6, 12, 17, patch, stride)
    assert "\n" not in str(err.value)


def test_triple():
    assert triple(8, "patch") == (8, 8, 8)
    assert triple([8, 16, 16], "patch") == (8, 16, 16)
    with pytest.raises(ConfigError, match="patch must be an int or three ints"):
        triple(8.0, "patch")


def test_2d_messages_are_unchanged():
    with pytest.raises(ConfigError, match=r"^stride 5x4 is larger than patch 4x4, which would leave pixels"):
        Grid.build(12, 17, 4, (5, 4))
    with pytest.raises(ConfigError, match=r"^patch 13x13 is larger than the 12x17 image"):
        Grid.build(12, 17, 13)


# ---- fills of volumes --------------------------------------------------------------------------------------


@pytest.fixture
def vol():
    return torch.rand(2, 5, 7, 9, generator=torch.Generator().manual_seed(3))


def test_volume_fills_gray_black_mean_constant_tuple(vol):
    assert torch.equal(baseline(vol, "gray"), torch.full_like(vol, 0.5))
    assert torch.equal(baseline(vol, "black"), torch.zeros_like(vol))
    mean = baseline(vol, "mean")
    for c in range(2):
        torch.testing.assert_close(mean[c], torch.full_like(vol[c], float(vol[c].double().mean())), rtol=0, atol=1e-6)
    assert torch.equal(baseline(vol, 0.25), torch.full_like(vol, 0.25))
    per = baseline(vol, (0.1, 0.9))
    assert per.shape == vol.shape and torch.all(per[0] == 0.1) and torch.all(per[1] == 0.9)
    with pytest.raises(ConfigError, match="2 channels"):
        baseline(vol, (0.1, 0.2, 0.3))


def test_volume_noise_is_seeded_and_in_unit_interval(vol):
    a, b, c = baseline(vol, "noise", 7), baseline(vol, "noise", 7), baseline(vol, "noise", 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == vol.shape and 0 <= float(a.min()) and float(a.max()) < 1


def test_3d_blur_is_the_2d_blur_on_slices_of_a_depth_constant_volume():
    """A volume constant along the depth: blurring in 3-D leaves each slice as the 2-D blur of it."""
    image = torch.rand(2, 13, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    volume = image[:, None].expand(2, 6, 13, 17).contiguous()
    blurred = baseline(volume, "blur")
    for d in range(6):
        torch.testing.assert_close(blurred[:, d], gaussian_blur(image), rtol=0, atol=1e-12)


def test_3d_blur_is_the_product_gaussian_away_from_edges():
    impulse = torch.zeros(1, 15, 15, 15, dtype=torch.float64)
    impulse[0, 7, 7, 7] = 1.0
    out = gaussian_blur3d(impulse)
    taps = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / 50)
    taps = taps / taps.sum()
    kernel = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    expected = F.conv3d(impulse[None], kernel[None, None], padding=5)[0]  # zero padding: exact away from the edges
    torch.testing.assert_close(out[:, 2:13, 2:13, 2:13], expected[:, 2:13, 2:13, 2:13], rtol=0, atol=1e-15)
    assert float(out.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(out, out.flip(1).flip(2).flip(3))
    constant = torch.full((1, 4, 5, 6), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur3d(constant), constant, rtol=0, atol=1e-15)
    batched = torch.rand(2, 1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur3d(batched)[1], gaussian_blur3d(batched[1]))


def test_baseline_refuses_other_ranks():
    with pytest.raises(ValueError, match="C x D x H x W"):
        baseline(torch.rand(1, 2, 3, 4, 5), "gray")
