"""The approximate mode: drill-down scores exactly where it scores, interpolates the rest, and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TinyConvNet, random_image
from PIL import Image

import occlens
from occlens import cli, drilldown
from occlens.grid import Grid
from occlens.models import load_default_model
from occlens.samples import sample

# ---------------------------------------------------------------------------------------------
# the quality measures


def test_ssim_matches_scikit_image_on_heat_map_images():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(27, 31))
    for noise in (0.05, 0.5, 2.0):
        approx = exact + rng.normal(scale=noise, size=exact.shape)
        low, span = exact.min(), np.ptp(exact)
        want = metrics.structural_similarity((exact - low) / span, (approx - low) / span, data_range=1.0)
        assert drilldown.ssim(exact, approx) == pytest.approx(want, abs=1e-12)
    assert drilldown.ssim(exact, exact) == pytest.approx(1.0)
    assert drilldown.ssim(exact, np.zeros_like(exact)) < 0.1


def test_spearman_ranks_with_ties():
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert drilldown.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert drilldown.spearman(a, -a) == pytest.approx(-1.0)
    # ties take their mean rank: x ranks 0,1,2,3 and y ranks 0.5,0.5,2,3
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([7.0, 7.0, 8.0, 9.0])
    rx, ry = np.array([0, 1, 2, 3.0]), np.array([0.5, 0.5, 2, 3])
    assert drilldown.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])


# ---------------------------------------------------------------------------------------------
# the geometry of the drill-down


def test_coarse_axis_steps_and_keeps_the_last_window():
    assert drilldown.coarse_axis(27, 2).tolist() == list(range(0, 27, 2))
    assert drilldown.coarse_axis(10, 3).tolist() == [0, 3, 6, 9]
    assert drilldown.coarse_axis(11, 3).tolist() == [0, 3, 6, 9, 10]
    assert drilldown.coarse_axis(1, 4).tolist() == [0]
    assert drilldown.coarse_axis(5, 1).tolist() == [0, 1, 2, 3, 4]


def test_interpolation_reproduces_bilinear_maps():
    grid = Grid.build(40, 57, (6, 9), (3, 4))  # 12 x 13 windows
    r, c = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    exact = np.stack([1.5 - 0.3 * r + 0.2 * c + 0.05 * r * c, np.full(r.shape, 2.0)]).reshape(2, -1)
    rows, cols = drilldown.coarse_axis(grid.rows, 3), drilldown.coarse_axis(grid.cols, 3)
    coarse = exact.reshape(2, grid.rows, grid.cols)[:, rows][:, :, cols].reshape(2, -1)
    np.testing.assert_allclose(drilldown.interpolate(coarse, rows, cols, grid), exact, atol=1e-12)


def test_refinement_picks_the_cells_around_the_largest_delta():
    grid = Grid.build(50, 50, 10, 5)  # 9 x 9 windows, coarse rows/cols 0 2 4 6 8 -> 4 x 4 cells
    rows = cols = drilldown.coarse_axis(9, 2)
    delta = np.zeros((5, 5))
    delta[2, 3] = -4.0  # coarse window (4, 6): four cells share it as a corner
    fine = drilldown.refine_windows(delta, rows, cols, grid, drilldown.Drilldown(2, 4 / 16))
    chosen = np.zeros((9, 9), bool)
    chosen.flat[fine] = True
    expected = np.zeros((9, 9), bool)
    expected[2:7, 4:9] = True
    expected[np.ix_(rows, cols)] = False
    np.testing.assert_array_equal(chosen, expected)
    everything = drilldown.refine_windows(delta, rows, cols, grid, drilldown.Drilldown(2, 1.0))
    assert len(everything) == 81 - 25
    assert len(drilldown.refine_windows(delta, rows, cols, grid, drilldown.Drilldown(2, 0.0))) == 0


def test_one_row_of_windows():
    grid = Grid.build(8, 60, (8, 6), (8, 3))  # 1 x 19 windows
    exact = np.sin(np.arange(19.0))[None]
    seen = []

    def score(windows, progress):
        seen.extend(windows.tolist())
        return exact[:, windows]

    out, n = drilldown.occluded_log_probs(score, grid, [0.0], drilldown.Drilldown(3, 0.5))
    assert n == len(seen) == len(set(seen)) and 0 in seen and 18 in seen
    np.testing.assert_allclose(out[:, seen], exact[:, seen])


@pytest.mark.parametrize(("factor", "share"), [(2, 0.4), (3, 0.2), (4, 0.0)])
def test_scored_windows_are_exact_and_the_rest_interpolated(factor, share):
    grid = Grid.build(45, 62, (7, 8), (3, 5))
    rng = np.random.default_rng(factor)
    exact = rng.normal(size=(2, grid.size))
    calls = []

    def score(windows, progress):
        calls.append(windows)
        return exact[:, windows]

    plan = drilldown.Drilldown(factor, share)
    out, n = drilldown.occluded_log_probs(score, grid, [0.3, -1.0], plan)
    scored = np.concatenate(calls)
    assert len(scored) == len(set(scored.tolist())) == n  # no window scored twice
    np.testing.assert_array_equal(out[:, scored], exact[:, scored])
    rows, cols = drilldown.coarse_axis(grid.rows, factor), drilldown.coarse_axis(grid.cols, factor)
    coarse = exact.reshape(2, grid.rows, grid.cols)[:, rows][:, :, cols].reshape(2, -1)
    rest = np.setdiff1d(np.arange(grid.size), scored)
    np.testing.assert_allclose(out[:, rest], drilldown.interpolate(coarse, rows, cols, grid)[:, rest])


def test_share_one_scores_everything():
    grid = Grid.build(30, 41, 5, 3)
    exact = np.random.default_rng(1).normal(size=(1, grid.size))
    out, n = drilldown.occluded_log_probs(lambda w, p: exact[:, w], grid, [0.0], drilldown.Drilldown(2, 1.0))
    assert n == grid.size
    np.testing.assert_array_equal(out, exact)


# ---------------------------------------------------------------------------------------------
# through occlens.explain and the command line


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_fast_explain_is_exact_on_the_coarse_windows(engine):
    image = random_image(3, 40, 53, seed=2)
    model = TinyConvNet(seed=3)
    exact = occlens.explain(model, image, patch=(6, 7), stride=(3, 4), label=1)
    fast = occlens.explain(model, image, patch=(6, 7), stride=(3, 4), label=1, engine=engine, fast=True)
    assert fast.engine == f"drilldown+{engine}"
    assert fast.settings.fast and fast.settings.engine == engine
    assert exact.grid.size > fast.meta["drilldown"]["scored"] > 0
    rows, cols = drilldown.coarse_axis(exact.grid.rows, 2), drilldown.coarse_axis(exact.grid.cols, 2)
    for m_fast, m_exact in [(fast.target_map, exact.target_map), (fast.label_map, exact.label_map)]:
        np.testing.assert_allclose(m_fast.delta[np.ix_(rows, cols)], m_exact.delta[np.ix_(rows, cols)], atol=1e-5)
    assert fast.loss == exact.loss and fast.predicted == exact.predicted


def test_fast_defaults_to_the_auto_engine_and_is_saved(tmp_path):
    image = random_image(3, 20, 24)
    result = occlens.explain(TinyConvNet(), image, patch=4, stride=2, fast=True)
    assert result.settings.engine == "auto" and result.engine.startswith("drilldown+")
    result.save(tmp_path / "fast")
    loaded = occlens.OcclusionResult.load(tmp_path / "fast")
    assert loaded.settings.fast and loaded.engine == result.engine
    assert loaded.meta["drilldown"] == result.meta["drilldown"]


def test_fast_tracks_the_exact_map_on_a_photo():
    """The default model on a bundled photo: the approximate map keeps the exact map's structure and order,
    and drilling down does better than interpolating the coarse pass alone."""
    loaded = load_default_model()
    image = loaded.preprocess(Image.open(sample("camera").path))
    exact = occlens.explain(loaded.module, image, patch=16, stride=12, engine="incremental")
    fast = occlens.explain(loaded.module, image, patch=16, stride=12, fast=True)
    assert fast.engine == "drilldown+incremental"
    assert fast.meta["drilldown"]["scored"] < 0.7 * exact.grid.size
    coarse, _ = drilldown.occluded_log_probs(
        lambda w, p: -exact.occluded_loss.reshape(1, -1)[:, w], exact.grid, [-exact.loss], drilldown.Drilldown(2, 0.0)
    )
    coarse_delta = (exact.loss + coarse[0]).reshape(exact.delta.shape)
    assert drilldown.ssim(exact.delta, fast.delta) > max(0.85, drilldown.ssim(exact.delta, coarse_delta) + 0.05)
    assert drilldown.spearman(exact.delta, fast.delta) > max(0.85, drilldown.spearman(exact.delta, coarse_delta))


def test_command_line_fast(tmp_path):
    path = sample("coffee").path
    code = cli.main(
        ["explain", str(path), "--patch", "32", "--fast", "--engine", "incremental", "--out", str(tmp_path)]
    )
    assert code == 0
    record = json.loads((tmp_path / "coffee.json").read_text())
    assert record["engine"] == "drilldown+incremental"
    assert record["settings"]["fast"] is True and record["settings"]["engine"] == "incremental"
    assert np.asarray(record["delta"]).shape == (7, 7)
