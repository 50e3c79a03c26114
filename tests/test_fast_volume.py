"""``fast=True`` and ``budget=SECONDS`` on volumes: the drill-down and the anytime map on three axes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_occlude import LinearVoxels, TinyConv3dNet, brute_linear_delta
from test_occlude import volume as random_volume

import occlens
from occlens import ConfigError, VolumeGrid
from occlens.analysis import similarity
from occlens.analysis.similarity import spearman
from occlens.cli import main
from occlens.core.fill import baseline
from occlens.core.targets import regression
from occlens.engines import drilldown

SHAPE = (18, 20, 22)
PATCH, STRIDE = (4, 4, 4), (2, 2, 2)  # 8 x 9 x 10 = 720 windows


def smooth_model() -> LinearVoxels:
    """``s(x) = Σ w·x`` with ``w`` a smooth bump: δL of a window is minus the bump's mass in it times (x − fill)."""
    d, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    bump = np.exp(-((d - 7.0) ** 2 + (h - 12.0) ** 2 + (w - 9.0) ** 2) / 40.0)
    model = LinearVoxels((1, *SHAPE))
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(bump)[None])
    return model.eval()


def flat_volume(value: float = 0.8) -> torch.Tensor:
    return torch.full((1, *SHAPE), value, dtype=torch.float64)


def exact_and(model, x, **options):
    scan = occlens.Volume(x)
    common = dict(patch=PATCH, stride=STRIDE, target=regression(1))
    return occlens.explain(model, scan, **common), occlens.explain(model, scan, **common, **options)


def test_the_grid_steps_of_a_volume_are_the_2d_steps_on_three_axes():
    grid = VolumeGrid.build(*SHAPE, PATCH, STRIDE)
    first = np.zeros(grid.shape, dtype=bool)
    first.flat[drilldown.first_windows(grid, 2)] = True
    p, r, c = np.indices(grid.shape)
    lattice = ((p % 2 == 0) | (p == grid.planes - 1)) & ((r % 2 == 0) | (r == grid.rows - 1))
    lattice &= (c % 2 == 0) | (c == grid.cols - 1)
    np.testing.assert_array_equal(first, lattice | ((p % 2 == 1) & (r % 2 == 1) & (c % 2 == 1)))
    # 3 x 3 x 3 neighbourhoods: one scored window reaches the 27 around it and no further
    known = np.zeros(grid.shape, dtype=bool)
    known[4, 4, 4] = True
    key = drilldown.disagreement(np.full(grid.shape, -2.0), known)
    assert np.isfinite(key).sum() == 27 and np.isfinite(key[3:6, 3:6, 3:6]).all() and key[4, 4, 4] == 2.0
    # six neighbours: a window between two scored planes is their mean; a linear ramp is kept exactly
    ramp = np.add.outer(np.add.outer(np.arange(5.0), 2 * np.arange(6.0)), 3 * np.arange(7.0))
    known = np.ones(ramp.shape, dtype=bool)
    known[1:-1, 1:-1, 1:-1] = False
    np.testing.assert_allclose(drilldown.interpolate(np.where(known, ramp, 0.0)[None], known)[0], ramp, atol=1e-7)


def test_fast_scores_fewer_windows_and_those_exactly():
    model, x = TinyConv3dNet(1, seed=4), random_volume(1, (10, 12, 14), seed=5)  # 4 x 5 x 6 windows
    exact = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE)
    fast = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE, fast=True)
    grid = exact.grid
    assert fast.engine == "drilldown+dense" and fast.settings.fast and fast.grid == grid
    scored = fast.meta["drilldown"]["scored"]
    first = drilldown.first_windows(grid)
    assert fast.meta["drilldown"]["windows"] == grid.size and len(first) <= scored < grid.size
    np.testing.assert_array_equal(fast.delta.ravel()[first], exact.delta.ravel()[first])  # the same arithmetic
    assert fast.delta.shape == grid.shape and fast.pixel_map.shape == (10, 12, 14)
    np.testing.assert_allclose(fast.pixel_map, grid.voxel_map(fast.delta), rtol=1e-12, atol=1e-12)
    assert fast.meta["input"]["shape"] == [1, 10, 12, 14]


def test_fast_and_budget_score_their_windows_with_the_incremental_engine_when_asked():
    model, x = TinyConv3dNet(1, seed=4), random_volume(1, (10, 12, 14), seed=5)
    exact = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE, engine="dense")
    fast = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE, fast=True, engine="incremental")
    assert fast.engine == "drilldown+incremental"
    first = drilldown.first_windows(exact.grid)
    np.testing.assert_allclose(fast.delta.ravel()[first], exact.delta.ravel()[first], rtol=0, atol=1e-10)
    whole = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE, budget=1e9, engine="incremental")
    assert whole.engine == "anytime+incremental" and whole.meta["anytime"]["complete"]
    np.testing.assert_allclose(whole.delta, exact.delta, rtol=0, atol=1e-10)


def test_fast_on_a_smooth_model_is_close_to_the_exact_map():
    x = flat_volume()
    model = smooth_model()
    exact, fast = exact_and(model, x, fast=True)
    grid = exact.grid
    fill = baseline(x.float(), "gray").double()
    np.testing.assert_allclose(exact.delta, brute_linear_delta(model.w.detach(), x, fill, grid), atol=1e-9)
    assert fast.meta["drilldown"]["scored"] < 0.6 * grid.size
    span = float(np.ptp(exact.delta))
    assert np.abs(fast.delta - exact.delta).mean() < 0.03 * span  # the stopping rule's tolerance: 9 % per pass
    assert spearman(fast.delta, exact.delta) > 0.98
    peaks = [np.array(np.unravel_index(np.argmin(m.delta), grid.shape)) for m in (fast, exact)]
    assert np.abs(peaks[0] - peaks[1]).max() <= 1  # the most negative window, or one of its neighbours


def test_a_tiny_budget_returns_the_coarse_map_and_says_so():
    x, model = flat_volume(), smooth_model()
    exact, coarse = exact_and(model, x, budget=1e-9)
    first = drilldown.first_windows(exact.grid, drilldown.COARSE)
    assert coarse.engine == "anytime+dense" and coarse.settings.budget == 1e-9
    assert coarse.meta["anytime"] == {"scored": len(first), "windows": exact.grid.size, "complete": False}
    assert len(first) < exact.grid.size / 8  # a volume's coarse lattice and its centres: a few percent
    np.testing.assert_array_equal(coarse.delta.ravel()[first], exact.delta.ravel()[first])
    assert np.isfinite(coarse.delta).all() and spearman(coarse.delta, exact.delta) > 0.9


def test_a_long_budget_is_the_exact_map():
    model, x = TinyConv3dNet(1, seed=2), random_volume(1, (9, 10, 11), seed=3)
    scan = occlens.Volume(x)
    exact = occlens.explain(model, scan, patch=(3, 4, 3), stride=(2, 2, 3))
    long = occlens.explain(model, scan, patch=(3, 4, 3), stride=(2, 2, 3), budget=600)
    size = exact.grid.size
    assert long.engine == "anytime+dense"
    assert long.meta["anytime"] == {"scored": size, "windows": size, "complete": True}
    np.testing.assert_array_equal(long.delta, exact.delta)
    np.testing.assert_array_equal(long.label_map is None, exact.label_map is None)


def test_fast_keeps_every_sub_target_and_the_label_map():
    model, x = TinyConv3dNet(1, seed=3), random_volume(1, (8, 10, 12), seed=6)
    scan = occlens.Volume(x)
    other = (occlens.explain(model, scan, patch=4).predicted + 1) % 4  # a label K that is not Q
    fast = occlens.explain(model, scan, patch=(4, 4, 4), stride=(2, 2, 2), label=other, fast=True)
    exact = occlens.explain(model, scan, patch=(4, 4, 4), stride=(2, 2, 2), label=other)
    first = drilldown.first_windows(exact.grid)
    assert fast.label_map is not None and fast.label_map.delta.shape == exact.grid.shape
    np.testing.assert_array_equal(fast.label_map.delta.ravel()[first], exact.label_map.delta.ravel()[first])


@pytest.mark.parametrize("option", [{"fast": True}, {"budget": 1.0}])
def test_band_occlusion_refuses_the_approximate_modes_in_one_line(option):
    bands = occlens.Bands(torch.rand(4, 8, 8), names=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="not available for band occlusion: its 4 band window") as err:
        occlens.explain(nn.Sequential(nn.Flatten(), nn.Linear(256, 3)), bands, patch="bands", **option)
    text = str(err.value)
    assert "\n" not in text and "leave it out" in text


def test_the_command_explains_a_nifti_scan_fast(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(1).random((24, 20, 16)).astype(np.float32)  # i, j, k; already in [0, 1]
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "x.nii.gz")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(2), nn.Flatten(),
                        nn.Linear(32, 3)).eval()  # fmt: skip
    torch.jit.script(net).save(str(tmp_path / "model3d.pt"))
    out = tmp_path / "out"
    argv = ["explain", tmp_path / "x.nii.gz", "--model", tmp_path / "model3d.pt", "--patch", "4", "--stride", "2",
            "--fast", "--out", out, "-q"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    saved = json.loads((out / "x.json").read_text())
    windows = 7 * 9 * 11  # depth 16, height 20, width 24 at window 4, stride 2
    assert saved["engine"] == "drilldown+dense" and saved["settings"]["fast"] is True
    assert saved["meta"]["drilldown"]["windows"] == windows and saved["meta"]["drilldown"]["scored"] < windows
    assert (out / "x.nii.gz").exists()


def test_ssim_of_volume_maps_matches_scikit_image_in_3d():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(9, 11, 13))
    for noise in (0.05, 0.5, 2.0):
        approx = exact + rng.normal(scale=noise, size=exact.shape)
        low, span = exact.min(), np.ptp(exact)
        want = metrics.structural_similarity((exact - low) / span, (approx - low) / span, data_range=1.0)
        assert similarity.ssim(exact, approx) == pytest.approx(want, abs=1e-12)
    assert similarity.ssim(exact, exact) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="3-D maps of at least 7x7x7"):
        similarity.ssim(exact[:6], exact[:6])


def test_later_passes_on_a_volume_score_whole_batches():
    grid = VolumeGrid.build(*SHAPE, PATCH, STRIDE)
    p, r, c = np.unravel_index(np.arange(grid.size), grid.shape)
    truth = -np.exp(-((p - 3.3) ** 2 + (r - 5.2) ** 2 + (c - 4.1) ** 2) / 3.0)[None, :]  # a narrow bump
    calls = []

    def score(windows, progress):
        calls.append(len(windows))
        return truth[:, windows]

    out, scored = drilldown.drill_down(score, grid, [0.0], batch=16)
    first = len(drilldown.first_windows(grid))
    most = round(drilldown.MOST * (grid.size - first))
    assert calls[0] == first and len(calls) > 1 and sum(calls) == scored
    assert all(n % 16 == 0 for n in calls[1:-1]) and (calls[-1] % 16 == 0 or scored == first + most)
