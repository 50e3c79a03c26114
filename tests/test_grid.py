"""Window geometry, unmocked and non-square: property tests against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import brute_pixel_map, brute_windows, ceil_div
from hypothesis import given, settings
from hypothesis import strategies as st

from occlens import ConfigError, Grid


@st.composite
def geometries(draw, max_size: int = 40):
    height = draw(st.integers(1, max_size))
    width = draw(st.integers(1, max_size))
    ph = draw(st.integers(1, height))
    pw = draw(st.integers(1, width))
    sh = draw(st.integers(1, ph))
    sw = draw(st.integers(1, pw))
    return height, width, (ph, pw), (sh, sw)


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_rows_cols_match_formula_and_brute_force(geom):
    height, width, (ph, pw), (sh, sw) = geom
    grid = Grid(height, width, (ph, pw), (sh, sw))
    _, rows, cols = brute_windows(height, width, (ph, pw), (sh, sw))
    assert grid.rows == ceil_div(height - ph, sh) + 1 == rows
    assert grid.cols == ceil_div(width - pw, sw) + 1 == cols
    assert grid.size == rows * cols


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_windows_raster_order_and_edges(geom):
    height, width, patch, stride = geom
    grid = Grid(height, width, patch, stride)
    expected, rows, cols = brute_windows(height, width, patch, stride)
    windows = grid.windows()
    assert windows.shape == (rows * cols, 4)
    assert [tuple(int(v) for v in w) for w in windows] == expected
    assert [grid.window(i) for i in range(grid.size)] == expected
    # raster order: top-left first, then along the row, then the next row
    keys = [(t, left) for t, _, left, _ in expected]
    assert keys == sorted(keys)
    assert expected[0][0] == 0 and expected[0][2] == 0
    for i, (t, b, left, right) in enumerate(expected):
        r, c = divmod(i, cols)
        assert (t, left) == (r * stride[0], c * stride[1])
        assert b == min(t + patch[0], height) and right == min(left + patch[1], width)
        assert 0 < b - t <= patch[0] and 0 < right - left <= patch[1]
    # the last window ends at the image edge, and only the last row/column is clipped
    assert expected[-1][1] == height and expected[-1][3] == width
    assert all(b - t == patch[0] for t, b, _, _ in expected[: (rows - 1) * cols])
    assert all(w[3] - w[2] == patch[1] for i, w in enumerate(expected) if i % cols != cols - 1)


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_coverage_equals_brute_force_count_and_covers_every_pixel(geom):
    height, width, patch, stride = geom
    grid = Grid(height, width, patch, stride)
    count = np.zeros((height, width), np.int64)
    for t, b, left, right in brute_windows(height, width, patch, stride)[0]:
        count[t:b, left:right] += 1
    coverage = grid.coverage()
    assert coverage.shape == (height, width)
    np.testing.assert_array_equal(coverage, count)
    assert coverage.min() >= 1


@settings(max_examples=300, deadline=None)
@given(geometries(), st.integers(0, 2**32 - 1))
def test_pixel_map_equals_brute_force_average(geom, seed):
    height, width, patch, stride = geom
    grid = Grid(height, width, patch, stride)
    values = np.random.default_rng(seed).normal(size=(grid.rows, grid.cols))
    got = grid.pixel_map(values)
    assert got.shape == (height, width)
    np.testing.assert_allclose(got, brute_pixel_map(values, height, width, patch, stride), rtol=0, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_partition_pixel_map_is_nearest_neighbour_blow_up(rows, cols, ph, pw, seed):
    """stride = patch on an exact multiple: the pixel map is D repeated over each block."""
    grid = Grid.build(rows * ph, cols * pw, (ph, pw))
    assert (grid.rows, grid.cols) == (rows, cols)
    values = np.random.default_rng(seed).normal(size=(rows, cols))
    np.testing.assert_array_equal(grid.pixel_map(values), np.kron(values, np.ones((ph, pw))))
    np.testing.assert_array_equal(grid.coverage(), np.ones((rows * ph, cols * pw), np.int64))


@pytest.mark.parametrize(
    ("height", "width", "patch", "stride", "rows", "cols"),
    [
        (12, 17, 4, None, 3, 5),  # stride = patch; last column clipped to 1 pixel
        (12, 17, (5, 3), (2, 3), 5, 6),
        (12, 17, (12, 17), None, 1, 1),
        (12, 17, 1, None, 12, 17),
        (7, 3, (3, 2), (3, 1), 3, 2),
        (1, 30, (1, 8), (1, 5), 1, 6),
    ],
)
def test_build_examples(height, width, patch, stride, rows, cols):
    grid = Grid.build(height, width, patch, stride)
    assert (grid.rows, grid.cols) == (rows, cols)
    if stride is None:
        assert grid.stride == grid.patch
    assert grid.windows()[-1, 1] == height and grid.windows()[-1, 3] == width


def test_window_index_out_of_range():
    grid = Grid.build(12, 17, 4)
    with pytest.raises(IndexError):
        grid.window(grid.size)
    with pytest.raises(IndexError):
        grid.window(-1)


@pytest.mark.parametrize(
    ("patch", "stride"),
    [(13, None), ((4, 18), None), (0, None), ((4, 4), 0), ((4, 4), (2, -1)), ((4, 4), (5, 4)), ((4, 4), (4, 5))],
)
def test_invalid_geometry_is_config_error(patch, stride):
    with pytest.raises(ConfigError):
        Grid.build(12, 17, patch, stride)
