"""occlens.explain on volumes and band occlusion: exact maps on analytic models, the reference, the Captum oracle,
save/load and NIfTI round trips, and every refusal in one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import Occlusion
from test_occlude import LinearVoxels, TinyConv3dNet, brute_linear_delta
from test_occlude import volume as random_volume

import occlens
from occlens import ConfigError, ImageError, OcclusionResult, VolumeGrid
from occlens.core.fill import baseline, check_fill
from occlens.core.occlude import occlusion_delta
from occlens.core.targets import regression
from occlens.volumes import to_nifti


def volume(channels, shape, seed):
    """A float64 volume of float32 values: what Volume.unit() (float32) hands a float64 model, unchanged."""
    return random_volume(channels, shape, seed).float().double()


def fill_of(x, fill):
    """The fill as explain makes it: from the float32 input, then in the model's dtype."""
    return baseline(x.float(), check_fill(fill)).double()


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("fill", ["gray", "mean", "blur", 0.2, (0.1, 0.7)])
def test_linear_voxel_model_exact_through_explain(fill):
    """s(x) = Σ w·x, explained as a regression: δL_i = s(x_occl_i) − s(x) = −Σ_window w·(x − fill), exactly."""
    x = volume(2, (5, 6, 7), seed=1)
    model = LinearVoxels(x.shape, seed=2).eval()
    r = occlens.explain(model, occlens.Volume(x), patch=(2, 4, 3), stride=(2, 3, 2), fill=fill, target=regression(1))
    grid = VolumeGrid.build(5, 6, 7, (2, 4, 3), (2, 3, 2))  # non-cubic, every axis clipped
    expected = brute_linear_delta(model.w.detach(), x, fill_of(x, fill), grid)
    assert r.grid == grid and r.delta.shape == (3, 2, 3) and r.pixel_map.shape == (5, 6, 7)
    np.testing.assert_allclose(r.delta, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.pixel_map, grid.voxel_map(expected), rtol=0, atol=1e-10)
    assert r.deltas.shape == (1, 3, 2, 3) and r.target_kind == "regression"  # sub-targets first, then Dw x R x C
    assert r.settings.patch == (2, 4, 3) and r.settings.stride == (2, 3, 2) and r.engine == "dense"


def test_class_map_equals_the_reference_and_batch_size_does_not_matter():
    model = TinyConv3dNet(1, seed=4)
    x = volume(1, (7, 9, 8), seed=5)
    grid = VolumeGrid.build(7, 9, 8, (3, 4, 5), (2, 3, 2))
    reference, q = occlusion_delta(model, x, fill_of(x, "gray"), grid)
    for batch in (1, 3, None):
        r = occlens.explain(model, occlens.Volume(x), patch=(3, 4, 5), stride=(2, 3, 2), batch_size=batch)
        assert r.predicted == q == r.target
        np.testing.assert_allclose(r.delta, reference, rtol=0, atol=1e-12)


def test_voxel_map_is_minus_captum_occlusion():
    """DESIGN §1's oracle in 3-D: the window spans all channels, (C, pd, ph, pw); the fill as the baseline."""
    model = TinyConv3dNet(2, seed=7)
    x = volume(2, (6, 8, 10), seed=8)
    patch, stride = (2, 4, 4), (2, 2, 3)  # windows that Captum's floor count covers exactly: (6-2)/2, (8-4)/2, (10-4)/3
    r = occlens.explain(model, occlens.Volume(x), patch=patch, stride=stride, fill="mean")
    fill = fill_of(x, "mean")
    attribution = Occlusion(lambda z: torch.log_softmax(model(z), dim=1)).attribute(
        x[None], target=r.predicted, sliding_window_shapes=(2, *patch), strides=(2, *stride), baselines=fill[None],
        perturbations_per_eval=4,
    )[0]  # fmt: skip
    for c in range(2):  # every channel gets the same map
        np.testing.assert_allclose(r.pixel_map, -attribution[c].numpy(), rtol=0, atol=1e-8)


def test_an_int_patch_is_every_axis_and_the_default_stride_is_the_patch():
    model = TinyConv3dNet(1, seed=1)
    r = occlens.explain(model, occlens.Volume(volume(1, (8, 8, 12), seed=2)), patch=4)
    assert r.grid.patch == r.grid.stride == (4, 4, 4) and r.delta.shape == (2, 2, 3)


def test_intensity_window_applies_before_the_fill_and_is_recorded():
    """A CT in Hounsfield units: the model sees [0, 1] after the window, gray (0.5) is the window's level."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1000, size=(4, 6, 6)).astype(np.int16)
    model = LinearVoxels((1, 4, 6, 6), seed=3).eval()
    scan = occlens.Volume(hu, spacing=(3.0, 0.5, 0.5), intensity="ct-soft-tissue")
    r = occlens.explain(model, scan, patch=(2, 3, 3), target=regression(1))
    unit = np.clip((hu.astype(np.float64) + 160) / 400, 0, 1)[None]
    expected = brute_linear_delta(model.w.detach(), torch.from_numpy(unit), torch.full((1, 4, 6, 6), 0.5),
                                  r.grid)  # fmt: skip
    np.testing.assert_allclose(r.delta, expected, rtol=0, atol=1e-5)  # float32 input to a float64 model
    record = r.meta["input"]
    assert record["kind"] == "volume" and record["spacing"] == [3.0, 0.5, 0.5]
    assert record["intensity"]["name"] == "ct-soft-tissue" and record["affine"][0][0] == 3.0


def test_save_load_round_trip(tmp_path):
    model = TinyConv3dNet(1, seed=3)
    scan = occlens.Volume(volume(1, (6, 8, 10), seed=4), spacing=2.0)
    other = (occlens.explain(model, scan, patch=(3, 4, 5)).predicted + 1) % 4  # a label K that is not Q
    r = occlens.explain(model, scan, patch=(3, 4, 5), label=other)
    for compact in (False, True):
        r.save(tmp_path / "v", compact=compact)
        back = OcclusionResult.load(tmp_path / "v")
        assert back.grid == r.grid and back.settings == r.settings and back.label_map is not None
        np.testing.assert_allclose(back.delta, r.delta, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(back.pixel_map, r.pixel_map, rtol=1e-6, atol=1e-9)
        assert back.meta["input"]["spacing"] == [2.0, 2.0, 2.0]


def test_nifti_in_explain_save_load_nifti_out(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(1).integers(-200, 300, size=(10, 8, 6)).astype(np.int16)  # i, j, k
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.7, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    model = TinyConv3dNet(1, seed=2)
    scan = occlens.read_volume(tmp_path / "scan.nii.gz", intensity="ct-soft-tissue")
    r = occlens.explain(model, scan, patch=(3, 4, 5), stride=(1, 2, 5))
    assert r.pixel_map.shape == (6, 8, 10)  # D x H x W = k, j, i
    r.save(tmp_path / "scan")
    back = OcclusionResult.load(tmp_path / "scan")
    written = to_nifti(back, tmp_path / "scan-map.nii.gz")
    image = nib.load(written)
    np.testing.assert_allclose(image.affine, affine)
    assert image.shape == data.shape
    np.testing.assert_allclose(np.asarray(image.dataobj), r.pixel_map.transpose(2, 1, 0), rtol=1e-6, atol=1e-7)
    # read back as a volume, the map lands on the same voxels as the scan
    again = occlens.read_volume(written)
    np.testing.assert_allclose(again.array[0].numpy(), r.pixel_map, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(again.affine, scan.affine)
    # a path explains the same as the volume read from it (with the data already in [0, 1] no window is needed)
    unit = (np.random.default_rng(2).random((10, 8, 6))).astype(np.float32)
    nib.save(nib.Nifti1Image(unit, affine), tmp_path / "unit.nii")
    by_path = occlens.explain(model, str(tmp_path / "unit.nii"), patch=(3, 4, 5))
    by_volume = occlens.explain(model, occlens.read_volume(tmp_path / "unit.nii"), patch=(3, 4, 5))
    np.testing.assert_array_equal(by_path.delta, by_volume.delta)


class PerBand(nn.Module):
    """Regression ``y = Σ_c w_c · mean(x_c)`` over the bands: occluding band c changes y by w_c·(fill − mean(x_c))."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.eval()

    def forward(self, x):
        return (x.flatten(2).mean(2) * self.w).sum(1, keepdim=True)


def test_band_occlusion_is_exact_on_a_linear_per_band_model():
    rng = np.random.default_rng(3)
    x = rng.random((5, 7, 9))
    w = [0.5, -2.0, 1.0, 3.0, 0.25]
    r = occlens.explain(PerBand(w), occlens.Bands(x), patch="bands", target=regression(0))
    expected = np.array(w) * (0.5 - x.reshape(5, -1).mean(1))
    assert r.delta.shape == (5,) and r.pixel_map.shape == (5,)
    np.testing.assert_allclose(r.delta, expected, rtol=0, atol=1e-6)
    # named groups: the bands that share a name are occluded together
    names = ["rgb", "rgb", "rgb", "nir", "swir"]
    g = occlens.explain(PerBand(w), occlens.Bands(x, names=names), patch="bands", target=regression(0), fill=0.0)
    grouped = np.array(w) * (0.0 - x.reshape(5, -1).mean(1))
    np.testing.assert_allclose(g.delta, [grouped[:3].sum(), grouped[3], grouped[4]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(g.pixel_map, [grouped[:3].sum()] * 3 + [grouped[3], grouped[4]], atol=1e-6)
    assert g.grid.names == ("rgb", "nir", "swir")


def test_band_occlusion_of_a_volume_and_of_a_plain_image(tmp_path):
    model = TinyConv3dNet(2, seed=5)
    x = volume(2, (4, 6, 6), seed=6)
    r = occlens.explain(model, occlens.Volume(x, names=["T1", "T2"]), patch="bands")
    fill = fill_of(x, "gray")
    for c in range(2):
        occluded = x.clone()
        occluded[c] = fill[c]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.stack([x, occluded])), dim=1)[:, r.predicted]
        assert r.delta[c] == pytest.approx(float(lp[1] - lp[0]), abs=1e-12)
    r.save(tmp_path / "bands")
    back = OcclusionResult.load(tmp_path / "bands")
    assert back.grid == r.grid and back.settings.patch == "bands"
    np.testing.assert_array_equal(back.delta, r.delta)
    image = torch.rand(3, 8, 8)  # an RGB tensor: which colour channel
    lin = nn.Sequential(nn.Flatten(), nn.Linear(192, 4)).eval()
    assert occlens.explain(lin, image, patch="bands").delta.shape == (3,)


def test_a_band_image_is_explained_by_place_with_any_channel_count():
    x = np.random.default_rng(4).random((6, 8, 10)).astype(np.float32)
    model = nn.Sequential(nn.Conv2d(6, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    fill = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    r = occlens.explain(model, occlens.Bands(x), patch=4, fill=fill)
    plain = occlens.explain(model, torch.from_numpy(x), patch=4, fill=fill, engine="dense")
    np.testing.assert_allclose(r.delta, plain.delta, rtol=0, atol=1e-6)
    assert r.meta["input"]["kind"] == "bands"


# ---- refusals, one line each ----------------------------------------------------------------------------------


def test_three_value_patch_on_a_2d_image_is_one_line():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ConfigError, match="three values, a volume's window") as err:
        occlens.explain(model, torch.rand(3, 16, 16), patch=(4, 8, 8))
    one_line(err)


def test_two_value_patch_on_a_volume_is_one_line():
    with pytest.raises(ConfigError, match="two values, an image's window") as err:
        occlens.explain(TinyConv3dNet(1), occlens.Volume(volume(1, (4, 8, 8), 0)), patch=(4, 8))
    one_line(err)


def test_a_volume_too_large_for_memory_is_one_line(monkeypatch):
    import occlens.engines.volume as engine

    monkeypatch.setattr(engine, "available_memory", lambda device: 64 << 10)  # 64 KB free
    # 16 x 24 x 24 voxels in the float64 model's dtype: 73,728 bytes; the copy, the input and the fill: 3x
    needs = r"one occluded copy of the input needs about 221,184 bytes with the input and its fill, more than 100%"
    with pytest.raises(ImageError, match=needs + " of the 65,536 bytes free") as err:
        occlens.explain(TinyConv3dNet(1), occlens.Volume(volume(1, (16, 24, 24), 0)), patch=8)
    one_line(err)


def test_all_classes_is_refused_for_volumes():  # fast and budget work: tests/test_fast_volume.py
    with pytest.raises(ConfigError, match="not available for volumes") as err:
        occlens.explain(TinyConv3dNet(1), occlens.Volume(volume(1, (4, 8, 8), 0)), patch=4, all_classes=True)
    one_line(err)


def test_bands_take_no_stride():
    with pytest.raises(ConfigError, match="no stride") as err:
        occlens.Settings(patch="bands", stride=4)
    one_line(err)


def test_reading_a_volume_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "scan.nii.gz").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImageError, match=r"pip install 'occlens\[medical\]'") as err:
        occlens.explain(TinyConv3dNet(1), str(tmp_path / "scan.nii.gz"), patch=4)
    one_line(err)


def test_a_file_that_is_not_nifti_is_one_line(tmp_path):
    pytest.importorskip("nibabel")
    (tmp_path / "scan.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(ImageError, match="not a NIfTI file") as err:
        occlens.explain(TinyConv3dNet(1), str(tmp_path / "scan.nii.gz"), patch=4)
    one_line(err)


def test_incremental_on_a_volume_runs_incremental():
    """The incremental engine's 3-D rules (tests/test_incremental_volume.py has the networks): the same map."""
    x = occlens.Volume(volume(1, (4, 8, 8), 1))
    r = occlens.explain(TinyConv3dNet(1), x, patch=4, engine="incremental")
    np.testing.assert_allclose(r.delta, occlens.explain(TinyConv3dNet(1), x, patch=4, engine="dense").delta, atol=1e-9)
    assert r.engine == "incremental"


def test_a_description_with_three_input_sizes_declares_a_volume_model(tmp_path):
    """No convolution to read: the description's input_size [D, H, W] says it is a volume model; its labels name
    the classes."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    torch.jit.script(m).save(str(tmp_path / "flat.pt"))
    loaded = occlens.load_model(tmp_path / "flat.pt", description={"input_size": [4, 6, 6], "labels": ["no", "yes"]})
    assert loaded.labels == ("no", "yes")
    x = volume(1, (4, 6, 6), seed=9)
    r = occlens.explain(loaded, occlens.Volume(x), patch=(2, 3, 3), label="yes")
    reference, q = occlusion_delta(m.double(), x, fill_of(x, "gray"), r.grid)
    assert r.predicted == q
    np.testing.assert_allclose(r.delta, reference, rtol=0, atol=1e-5)  # the float32 model on the float32 volume
    assert r.label == 1


def test_a_conv3d_module_loads_as_a_volume_model():
    loaded = occlens.load_model(TinyConv3dNet(1, seed=0))
    assert len(loaded.labels) == 4
    assert occlens.explain(loaded, occlens.Volume(volume(1, (4, 8, 8), 1)), patch=4).delta.shape == (1, 2, 2)


def test_a_stride_of_bands_needs_a_patch_of_bands():
    with pytest.raises(ConfigError, match="goes with patch='bands' only") as err:
        occlens.Settings(patch=8, stride="bands")
    one_line(err)
    assert occlens.Settings(patch="bands", stride="bands").stride is None


def test_sub_targets_come_first_then_the_window_grid(tmp_path):
    """A function of T = 2 columns: deltas T x Dw x R x C, pixel_maps T x D x H x W, each column's map exact."""
    x = volume(1, (5, 6, 7), seed=11)
    model = LinearVoxels(x.shape, seed=12).eval()
    r = occlens.explain(model, occlens.Volume(x), patch=(2, 4, 3), target=lambda out: out[:, [1, 1]] * torch.tensor(
        [1.0, -2.0], dtype=torch.float64))  # fmt: skip
    expected = brute_linear_delta(model.w.detach(), x, fill_of(x, "gray"), r.grid)
    assert r.deltas.shape == (2, 3, 2, 3) and r.pixel_maps.shape == (2, 5, 6, 7) and len(r.sub_targets) == 2
    np.testing.assert_allclose(r.deltas[0], expected, atol=1e-10)
    np.testing.assert_allclose(r.deltas[1], -2 * expected, atol=1e-10)
    r.save(tmp_path / "t")
    back = OcclusionResult.load(tmp_path / "t")
    np.testing.assert_allclose(back.pixel_maps, r.pixel_maps, atol=1e-12)


def test_a_list_of_volumes_gives_a_list_of_results():
    model = TinyConv3dNet(1, seed=2)
    scans = [occlens.Volume(volume(1, (4, 8, 8), s)) for s in (1, 2)]
    results = occlens.explain(model, scans, patch=4)
    assert len(results) == 2
    for scan, r in zip(scans, results, strict=True):
        np.testing.assert_array_equal(r.delta, occlens.explain(model, scan, patch=4).delta)


def test_a_multiband_tiff_path_explained_band_by_band(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    x = np.random.default_rng(5).integers(0, 1000, size=(5, 7, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "bands.tif", x, photometric="minisblack", planarconfig="separate")
    w = [0.5, -2.0, 1.0, 3.0, 0.25]
    unit = x / 1000.0  # the data in [0, 1] after the intensity window (0, 1000)
    expected = np.array(w) * (0.5 - unit.reshape(5, -1).mean(1))
    by_bands = occlens.explain(PerBand(w), occlens.read_bands(tmp_path / "bands.tif", intensity=(0, 1000)),
                               patch="bands", target=regression(0))  # fmt: skip
    np.testing.assert_allclose(by_bands.delta, expected, rtol=0, atol=1e-6)
    with pytest.raises(ImageError, match="intensity window") as err:  # a path: uint16 needs a declared window
        occlens.explain(PerBand(w), str(tmp_path / "bands.tif"), patch="bands", target=regression(0))
    one_line(err)
