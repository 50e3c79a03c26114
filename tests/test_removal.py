"""Removal strategies (gray, blur, ROAD's imputation), segments (window cells, superpixels) and the statistics
over images (bootstrap interval, paired sign-flip test), each against an independent reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import H, W, assert_one_line_naming, brute_windows, random_image
from scipy import ndimage, stats

from occlens import Grid, metrics
from occlens.analysis.removal import impute
from occlens.analysis.segments import segment_labels
from occlens.core.errors import ConfigError

# ROAD's weights (Rong et al. 2022, their reference implementation): 1/6 for the 4 neighbours sharing an edge,
# 1/12 for the 4 diagonal ones; and its noise, here in [0, 1] image units
WEIGHTS = {(dr, dc): 1 / 6 if 0 in (dr, dc) else 1 / 12 for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)}
NOISE = 0.01


def scattered_mask(seed: int = 0, share: float = 0.4, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width)) < share


def ramp(height: int = H, width: int = W) -> np.ndarray:
    """3 x H x W, each channel a plane a*row + b*col + c inside [0, 1]."""
    r, c = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([0.1 + 0.03 * r + 0.02 * c, 0.9 - 0.02 * r - 0.01 * c, 0.3 + 0.04 * r - 0.015 * c])


# -- gray and blur -----------------------------------------------------------------------------------


def test_gray_and_blur_replace_exactly_the_removed_pixels():
    x, mask = random_image(), scattered_mask()
    gray = metrics.remove(x, mask, "gray")
    np.testing.assert_array_equal(gray.numpy()[:, mask], 0.5)
    np.testing.assert_array_equal(gray.numpy()[:, ~mask], x.numpy()[:, ~mask])
    # the blurred copy: an 11-tap Gaussian of sigma 5 (truncate 1.0 = radius 5), edges replicated
    want = ndimage.gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 5, 5), truncate=1.0, mode="nearest")
    blur = metrics.remove(x, mask, "blur")
    np.testing.assert_allclose(blur.numpy()[:, mask], want[:, mask], atol=1e-6)
    np.testing.assert_array_equal(blur.numpy()[:, ~mask], x.numpy()[:, ~mask])


# -- ROAD's linear imputation ------------------------------------------------------------------------


def test_road_imputes_a_linear_ramp_exactly_away_from_the_borders():
    image = ramp()
    inner = np.zeros((H, W), bool)
    inner[1:-1, 1:-1] = True
    mask = scattered_mask(1, 0.5) & inner
    mask[3:9, 4:12] = True  # and a large hole: its middle is 3 pixels from anything kept
    np.testing.assert_allclose(impute(image, mask), image, atol=1e-12)


def test_road_renormalises_the_weights_where_the_image_ends():
    # one pixel removed on the top edge: its 5 neighbours weigh 1/6 + 1/6 (left, right) and 1/12 + 1/6 + 1/12
    # (the row below), so the imputed value is the ramp there plus half a row step
    image, mask = ramp(), np.zeros((H, W), bool)
    mask[0, 5] = True
    slopes = np.array([0.03, -0.02, 0.04])
    np.testing.assert_allclose(impute(image, mask)[:, 0, 5], image[:, 0, 5] + slopes / 2, atol=1e-12)


def test_road_solution_is_the_weighted_mean_of_its_neighbours():
    x, mask = random_image(seed=4).numpy().astype(np.float64), scattered_mask(2, 0.6)
    out = impute(x, mask)
    np.testing.assert_array_equal(out[:, ~mask], x[:, ~mask])
    for r, c in zip(*np.nonzero(mask), strict=True):  # borders included
        neighbours = [(r + dr, c + dc, w) for (dr, dc), w in WEIGHTS.items() if 0 <= r + dr < H and 0 <= c + dc < W]
        mean = sum(w * out[:, i, j] for i, j, w in neighbours) / sum(w for *_, w in neighbours)
        np.testing.assert_allclose(out[:, r, c], mean, atol=1e-10)


def test_road_noise_is_seeded_spread_as_documented_and_only_on_removed_pixels():
    x = 0.3 + 0.4 * random_image(height=40, width=50, seed=5)  # inside [0.3, 0.7]: nothing is clipped
    mask = scattered_mask(3, 0.5, 40, 50)
    road = metrics.remove(x, mask, "road", seed=1).numpy().astype(np.float64)
    noise = road - impute(x.numpy().astype(np.float64), mask)
    np.testing.assert_allclose(noise[:, ~mask], 0, atol=1e-7)
    assert noise[:, mask].std() == pytest.approx(NOISE, rel=0.05)  # ~3000 draws
    assert abs(noise[:, mask].mean()) < 0.1 * NOISE
    assert torch.equal(metrics.remove(x, mask, "road", seed=1), metrics.remove(x, mask, "road", seed=1))
    assert not torch.equal(metrics.remove(x, mask, "road", seed=1), metrics.remove(x, mask, "road", seed=2))


def test_a_batch_of_masks_gives_each_masks_own_image():
    x = random_image(seed=6)
    masks = np.stack([scattered_mask(s, share) for s, share in ((0, 0.2), (1, 0.5), (2, 0.9))])
    for removal in metrics.REMOVALS:
        batch = metrics.remove(x, masks, removal, seed=3)
        assert batch.shape == (3, 3, H, W)
        for i in range(3):  # alone, or in another order: the same image
            assert torch.equal(batch[i], metrics.remove(x, masks[i], removal, seed=3))
        assert torch.equal(metrics.remove(x, masks[::-1].copy(), removal, seed=3), batch.flip(0))


def test_nothing_removed_is_the_image_and_everything_removed_is_its_mean():
    x = random_image(seed=7).numpy().astype(np.float64)
    np.testing.assert_array_equal(impute(x, np.zeros((H, W), bool)), x)
    np.testing.assert_allclose(impute(x, np.ones((H, W), bool)), np.broadcast_to(x.mean(axis=(1, 2))[:, None, None],
                               x.shape), atol=1e-12)  # fmt: skip


def test_removal_names_and_masks_are_checked():
    with pytest.raises(ConfigError) as err:
        metrics.remove(random_image(), scattered_mask(), "inpaint")
    assert_one_line_naming(err.value, "inpaint", "gray", "blur", "road")
    assert metrics.check_removal(" ROAD ") == "road" and metrics.check_removal("grey") == "gray"
    with pytest.raises(ConfigError) as err:
        metrics.remove(random_image(), np.zeros((4, 5), bool), "gray")
    assert_one_line_naming(err.value, "(1, 4, 5)")


# -- segments ----------------------------------------------------------------------------------------


def covering(height, width, patch, stride) -> np.ndarray:
    """Per pixel, the tuple of windows covering it (brute force)."""
    windows, _, _ = brute_windows(height, width, patch, stride)
    cover = np.zeros((height, width, len(windows)), bool)
    for i, (t, b, left, right) in enumerate(windows):
        cover[t:b, left:right, i] = True
    return cover


def test_window_cells_of_a_partition_are_its_windows_in_raster_order():
    cells = metrics.window_cells(Grid.build(H, W, (5, 4)), H, W)
    cover = covering(H, W, (5, 4), (5, 4))
    np.testing.assert_array_equal(cells, cover.argmax(axis=2))  # windows 0..R*C-1, one per pixel


def test_window_cells_of_overlapping_windows_are_the_blocks_the_same_windows_cover():
    grid = Grid.build(H, W, (4, 6), (3, 2))
    cells, cover = metrics.window_cells(grid, H, W), covering(H, W, (4, 6), (3, 2))
    signature = {}
    for r, c in itertools.product(range(H), range(W)):
        signature.setdefault(int(cells[r, c]), set()).add(cover[r, c].tobytes())
    assert all(len(s) == 1 for s in signature.values())  # one set of windows per cell
    assert len({next(iter(s)) for s in signature.values()}) == len(signature)  # and a different one per cell
    assert sorted(signature) == list(range(len(signature)))


def test_superpixel_labels_are_renumbered_and_bad_segments_refused():
    labels = np.where(np.arange(W)[None, :] < 5, 7, -2).repeat(H, axis=0)
    np.testing.assert_array_equal(segment_labels(labels, H, W), (labels == 7).astype(int))  # -2 -> 0, 7 -> 1
    for bad, named in ((np.zeros((4, 5), int), "(4, 5)"), (np.zeros((H, W)), "float64")):
        with pytest.raises(ConfigError) as err:
            segment_labels(bad, H, W)
        assert_one_line_naming(err.value, named)
    with pytest.raises(ConfigError) as err:
        segment_labels(Grid.build(8, 8, 4), H, W)
    assert_one_line_naming(err.value, "8x8", f"{H}x{W}")


# -- statistics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 9])
def test_paired_test_is_scipys_exact_paired_permutation_test(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.5
    want = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                  n_resamples=np.inf, alternative="two-sided").pvalue  # fmt: skip
    assert metrics.paired_test(a, b) == pytest.approx(want)


def test_paired_test_by_hand_and_by_monte_carlo():
    assert metrics.paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == pytest.approx(2 / 8)  # only all-+ and all--
    assert metrics.paired_test([1.0, 2.0], [1.0, 2.0]) == 1.0  # no difference at all
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=30), rng.normal(size=30)  # p about 0.6: a wrong count would show
    want = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                  n_resamples=20_000, vectorized=True, random_state=1).pvalue  # fmt: skip
    assert metrics.paired_test(a, b, resamples=20_000) == pytest.approx(want, abs=0.015)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    v = np.array([0.1, 0.4, 0.5, 1.3])
    means = np.sort([v[list(i)].mean() for i in itertools.product(range(4), repeat=4)])  # all 256, equally likely
    exact = means[[int(np.ceil(q * 256)) - 1 for q in (0.025, 0.975)]]  # the inverse CDF: 0.2 and 1.075
    assert np.mean(means < exact[0] - 1e-9) < 0.022 and np.mean(means <= exact[0] + 1e-9) > 0.03  # clear of a jump
    low, high = metrics.bootstrap_interval(v, resamples=200_000, seed=0)
    np.testing.assert_allclose([low, high], exact, atol=1e-12)
    assert metrics.bootstrap_interval([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2), abs=1e-15)  # a mean's rounding
    assert all(np.isnan(metrics.bootstrap_interval(v, resamples=0)))
    assert metrics.bootstrap_interval(v, seed=3) == metrics.bootstrap_interval(v, seed=3)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: metrics.bootstrap_interval([1.0, 2.0], resamples=-1), "-1"),
        (lambda: metrics.bootstrap_interval([]), "no values"),
        (lambda: metrics.bootstrap_interval([1.0, np.nan]), "NaN"),
        (lambda: metrics.bootstrap_interval([1.0, 2.0], level=1.5), "1.5"),
        (lambda: metrics.paired_test([1.0, 2.0], [1.0]), "2 and 1"),
    ],
)
def test_statistics_refuse_bad_input_in_one_line(call, named):
    with pytest.raises(ConfigError) as err:
        call()
    assert_one_line_naming(err.value, named)
