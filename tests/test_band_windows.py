"""Band windows (``patch=("bands", N)`` / ``--patch bands,N``): each band group occluded inside each 2-D window.

An analytic linear model gives every (band, window) δL in closed form; a nonlinear one is held to occluding the
same band and box by hand; over non-overlapping windows the bands' δL sum to the plain spatial map's (linearity);
results save and load with their grid; the command writes its files and refuses bad spellings in one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import occlens
from occlens import ConfigError, OcclusionResult
from occlens.cli import main
from occlens.core.checks import int_pair
from occlens.core.grid import BandWindowGrid, Grid, grid_from_json
from occlens.core.targets import regression


class Linear(nn.Module):
    """``score = Σ w[c, h, w] · x[c, h, w]``: occluding band group G inside box S changes it by
    ``Σ_{c in G, (h, w) in S} w · (fill - x)``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w.double())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() * self.w).sum((1, 2, 3))[:, None]


def closed_form(w: np.ndarray, x: np.ndarray, fill: float, grid: BandWindowGrid) -> np.ndarray:
    """The B x R x C δL of the linear model, window by window from the grid's spans (not its batches)."""
    out = np.empty(grid.shape)
    (rs, re), (cs, ce) = grid.space.row_spans(), grid.space.col_spans()
    for b, group in enumerate(grid.groups):
        for r in range(len(rs)):
            for c in range(len(cs)):
                box = (list(group), slice(rs[r], re[r]), slice(cs[c], ce[c]))
                out[b, r, c] = float((w[box] * (fill - x[box])).sum())
    return out


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize(("patch", "stride"), [(("bands", 4), None), (("bands", 4, 5), (2, 3)), (("bands", 3), 2)])
def test_band_windows_are_exact_on_a_linear_model(patch, stride):
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(4, 11, 13)), rng.random((4, 11, 13)).astype(np.float32)
    r = occlens.explain(Linear(torch.from_numpy(w)), torch.from_numpy(x), patch=patch, stride=stride,
                        target=regression(0), fill=0.25)  # fmt: skip
    grid = r.grid
    assert isinstance(grid, BandWindowGrid) and grid.names == ("0", "1", "2", "3")
    spatial = patch[1] if len(patch) == 2 else patch[1:]
    assert r.delta.shape == grid.shape == (4, *Grid.build(11, 13, spatial, stride).shape)
    np.testing.assert_allclose(r.delta, closed_form(w, x.astype(np.float64), 0.25, grid), rtol=0, atol=1e-9)
    # the pixel map: each band's own 2-D map, the mean δL of its windows covering each pixel
    assert r.pixel_map.shape == (4, 11, 13)
    for b in range(4):
        np.testing.assert_allclose(r.pixel_map[b], grid.space.pixel_map(r.delta[b]), rtol=0, atol=1e-12)
    covering = [d for (t, bo, le, ri), d in zip(grid.space.windows(), r.delta[2].ravel(), strict=True)
                if t <= 5 < bo and le <= 6 < ri]  # fmt: skip
    assert r.pixel_map[2, 5, 6] == pytest.approx(np.mean(covering), abs=1e-12)
    assert r.settings.patch == ("bands", *grid.patch) and r.settings.stride == grid.stride


def test_named_groups_are_occluded_together_inside_each_window():
    rng = np.random.default_rng(1)
    w, x = rng.normal(size=(4, 8, 8)), rng.random((4, 8, 8)).astype(np.float32)
    image = occlens.Bands(x, names=["rgb", "rgb", "rgb", "nir"])
    r = occlens.explain(Linear(torch.from_numpy(w)), image, patch=("bands", 4), target=regression(0), fill=0.0)
    assert r.grid.groups == ((0, 1, 2), (3,)) and r.grid.names == ("rgb", "nir") and r.delta.shape == (2, 2, 2)
    np.testing.assert_allclose(r.delta, closed_form(w, image.unit().double().numpy(), 0.0, r.grid), atol=1e-9)


def test_a_nonlinear_model_equals_occluding_the_band_and_box_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 5)).eval()  # fmt: skip
    x = torch.rand(3, 10, 9)
    r = occlens.explain(model, x, patch=("bands", 4, 3), stride=(3, 3), fill=0.5, target=2)
    assert r.target == 2

    @torch.no_grad()
    def score(image: torch.Tensor) -> float:
        return float(torch.log_softmax(model(image[None]).double(), 1)[0, 2])

    clean = score(x)
    expected = np.empty(r.grid.shape)
    for i in range(r.grid.size):
        b, top, bottom, left, right = r.grid.window(i)
        copy = x.clone()
        copy[b, top:bottom, left:right] = 0.5
        expected.flat[i] = score(copy) - clean
    np.testing.assert_allclose(r.delta, expected, rtol=0, atol=1e-5)


def test_over_a_partition_the_bands_sum_to_the_spatial_map():
    rng = np.random.default_rng(2)
    w, x = rng.normal(size=(3, 12, 12)), torch.from_numpy(rng.random((3, 12, 12)).astype(np.float32))
    model, target = Linear(torch.from_numpy(w)), regression(0)
    crossed = occlens.explain(model, x, patch=("bands", 4), target=target, fill=0.0)
    spatial = occlens.explain(model, x, patch=4, target=target, fill=0.0)
    np.testing.assert_allclose(crossed.delta.sum(0), spatial.delta, rtol=0, atol=1e-9)


def test_a_result_saves_and_loads_with_its_grid(tmp_path):
    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(2, 9, 8)), torch.from_numpy(rng.random((2, 9, 8)).astype(np.float32))
    r = occlens.explain(Linear(torch.from_numpy(w)), x, patch=("bands", 4), stride=2, target=regression(0))
    assert grid_from_json(json.loads(json.dumps(r.grid.to_json()))) == r.grid
    for compact in (False, True):
        r.save(tmp_path / f"r{compact}", compact=compact)
        back = OcclusionResult.load(tmp_path / f"r{compact}")
        assert back.grid == r.grid and back.settings == r.settings
        np.testing.assert_allclose(back.delta, r.delta, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(back.pixel_map, r.pixel_map, rtol=1e-6, atol=1e-6)
    assert "2 bands x 4x3 windows of 4x4 stride 2x2 on 9x8" in repr(r)
    assert r.plot() is not None  # one map per band


def test_settings_spell_band_windows():
    s = occlens.Settings(patch=("bands", 8))
    assert s.patch == ("bands", 8, 8) and s.resolved().stride == (8, 8)
    assert occlens.Settings(patch=["bands", 8, 4], stride=2).stride == (2, 2)
    assert occlens.Settings.from_dict(occlens.Settings(patch=("bands", 6), stride=3).to_dict()).patch == ("bands", 6, 6)
    for patch, stride, match in [(("bands", 0), None, "at least 1 pixel"), (("bands", 4), 8, "larger than patch"),
                                 (("bands", 1, 2, 3), None, "not a window"), (("bands", "a"), None, "patch must be"),
                                 (("bands", 4), (2, 2, 2), "2-D image")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match) as err:
            occlens.Settings(patch=patch, stride=stride)
        one_line(err)
    with pytest.raises(ConfigError, match="not a window"):
        occlens.Settings(patch=4, stride=("bands", 4))


def test_the_command_line_spelling_parses():
    assert int_pair("bands,8") == ("bands", 8, 8) and int_pair("bands,8,4") == ("bands", 8, 4)
    assert int_pair("Bands,8x4") == ("bands", 8, 4) and int_pair("bands") == "bands"
    for bad in ("bands,a", "bands,1,2,3", "bands,", "bands,8,"):
        with pytest.raises(ValueError, match="bands,N or bands,H,W"):
            int_pair(bad)


def test_a_volume_fast_and_budget_are_refused_and_incremental_runs_dense():
    x = torch.rand(2, 8, 8)
    model = Linear(torch.ones(2, 8, 8))
    with pytest.raises(ConfigError, match="band windows") as err:
        occlens.explain(model, occlens.Volume(np.random.default_rng(0).random((1, 4, 8, 8))), patch=("bands", 4))
    assert "volume" in one_line(err)
    for keyword in ({"fast": True}, {"budget": 5.0}):
        with pytest.raises(ConfigError, match="not available for band windows") as err:
            occlens.explain(model, x, patch=("bands", 4), target=regression(0), **keyword)
        one_line(err)
    with pytest.warns(UserWarning, match="dense engine"):
        r = occlens.explain(model.eval(), x, patch=("bands", 4), target=regression(0), engine="incremental")
    assert r.engine == "dense" and r.delta.shape == (2, 2, 2)


@pytest.fixture
def tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    x = np.random.default_rng(4).integers(0, 1000, size=(3, 16, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", x, photometric="minisblack", planarconfig="separate")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 3)).eval()  # fmt: skip
    torch.jit.script(m).save(str(tmp_path / "m.pt"))
    return tmp_path


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # the parser's errors: one line, exit 2
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_writes_band_windows(tiff, capsys):
    code, _, err = run(["explain", tiff / "img.tif", "--model", tiff / "m.pt", "--patch", "bands,8",
                        "--intensity", "0,1000", "--out", tiff / "o"], capsys)  # fmt: skip
    assert code == 0, err
    written = sorted(p.name for p in (tiff / "o").iterdir())
    assert {"img.png", "img.json", "img.npz"} <= set(written), written
    back = OcclusionResult.load(tiff / "o" / "img")
    assert isinstance(back.grid, BandWindowGrid) and back.delta.shape == (3, 2, 2)
    assert back.pixel_map.shape == (3, 16, 16)


@pytest.mark.parametrize(("patch", "says"), [("bands,0", "at least 1 pixel"), ("bands,a", "bands,N or bands,H,W"),
                                             ("bands,1,2,3", "bands,N or bands,H,W")])  # fmt: skip
def test_bad_spellings_are_one_line(tiff, capsys, patch, says):
    code, _, err = run(["explain", tiff / "img.tif", "--model", tiff / "m.pt", "--patch", patch,
                        "--intensity", "0,1000", "--out", tiff / "o"], capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, err


def test_sub_targets_come_first():
    from occlens.targets import segment

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)).eval()  # a segmenter: every predicted segment a sub-target
    x = torch.rand(3, 8, 12)
    r = occlens.explain(model, x, patch=("bands", 4), target="segment")
    t = len(r.sub_targets)
    assert t > 1 and r.deltas.shape == (t, 3, 2, 3) and r.pixel_maps.shape == (t, 3, 8, 12)
    name = r.sub_targets[1]
    one = occlens.explain(model, x, patch=("bands", 4), target=segment(int(name)))
    np.testing.assert_allclose(r.deltas[1], one.delta, rtol=0, atol=1e-9)


@pytest.mark.parametrize("patch", ["bands", "bands,8"])
def test_a_dataset_run_refuses_band_occlusion_in_one_line(tiff, capsys, patch):
    folder = tiff / "data" / "0"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(folder / "a.png")
    code, _, err = run(["run", tiff / "data", "--model", tiff / "m.pt", "--patch", patch, "--out", tiff / "runs"],
                       capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "band occlusion, which dataset runs do not do yet" in lines[0], err
    assert not (tiff / "runs").exists()  # nothing half-written
    with pytest.raises(occlens.ConfigError, match="dataset runs do not do yet"):
        occlens.run(tiff / "data", tiff / "runs", str(tiff / "m.pt"), patch=("bands", 8))
