"""Every target on volumes: a 3-D segmenter's region (exact maps on an analytic segmenter, the Captum oracle, one set
of forward passes for every sub-target), regression, margin and functions; every refusal one line, exit 2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import Occlusion
from test_occlude import TinyConv3dNet

import occlens
from occlens import ConfigError, OcclusionResult, VolumeGrid, targets
from occlens.cli import main
from occlens.core.targets import parse_target

SHAPE = (6, 8, 10)  # D, H, W: non-cubic
PATCH, STRIDE = (2, 4, 3), (2, 3, 2)  # non-cubic, rows and columns clipped at the far edge


def eighths(shape, seed):
    """A 1 x D x H x W volume of multiples of 1/8: its sums are exact in float32, as are the model's logits."""
    return np.random.default_rng(seed).integers(0, 9, size=(1, *shape)).astype(np.float32) / 8


def local_sums(x: np.ndarray, stride: int = 1) -> np.ndarray:
    """Σ of x over each voxel's 3x3x3 neighbourhood (zero outside), or with ``stride`` 2 over each 2x2x2 block; the
    channels summed."""
    v = x.astype(np.float64).sum(0)
    if stride == 2:
        d, h, w = (n // 2 for n in v.shape)
        return v[: 2 * d, : 2 * h, : 2 * w].reshape(d, 2, h, 2, w, 2).sum((1, 3, 5))
    p = np.pad(v, 1)
    return sum(p[a : a + v.shape[0], b : b + v.shape[1], c : c + v.shape[2]]
               for a in range(3) for b in range(3) for c in range(3))  # fmt: skip


def logits_of(t: np.ndarray) -> np.ndarray:
    """Three classes per voxel from its local sum t: [1, t - 13.5, 13.5 - t] (t's middle is 27 x 0.5)."""
    return np.stack([np.ones_like(t), t - 13.5, 13.5 - t])


def log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=0)


class LocalSums3d(nn.Module):
    """An analytic 3-D segmenter: per-voxel logits (N x 3 x d x h x w) are :func:`logits_of` the voxel's local sum
    (a 3x3x3 neighbourhood; ``stride=2``: a 2x2x2 block, a half-size output as a stride-2 decoder's)."""

    def __init__(self, stride: int = 1, wrapped: bool = False):
        super().__init__()
        self.stride, self.wrapped = stride, wrapped
        self.calls = 0
        self.eval()

    def forward(self, x):
        self.calls += 1
        ones = torch.ones(1, x.shape[1], *(3 - (self.stride == 2),) * 3, dtype=x.dtype)
        t = nn.functional.conv3d(x, ones, stride=self.stride, padding=1 if self.stride == 1 else 0)
        z = torch.cat([torch.ones_like(t), t - 13.5, 13.5 - t], dim=1)
        return {"out": z} if self.wrapped else z


def expected(x, fill, grid, s):
    """δL of every window (s(x_occl) − s(x), window by window) and the voxel map (the mean over covering
    windows), both by loops: no occlens code."""
    clean = s(x)
    deltas, total, count = [], np.zeros(x.shape[1:]), np.zeros(x.shape[1:])
    for f, b, t, bo, left, right in grid.windows():
        occluded = x.copy()
        occluded[:, f:b, t:bo, left:right] = fill
        deltas.append(s(occluded) - clean)
        total[f:b, t:bo, left:right] += deltas[-1]
        count[f:b, t:bo, left:right] += 1
    return np.array(deltas).reshape(grid.shape), total / count


def region_score(region: np.ndarray, cls: int, stride: int = 1):
    """s(x) = the mean over ``region`` (at the output's resolution) of log_softmax(logits)[cls], float64."""
    return lambda x: float(log_softmax(logits_of(local_sums(x, stride)))[cls][region].mean())


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# --- exact maps on the analytic segmenter -----------------------------------------------------------------------


def test_a_box_region_gives_the_exact_voxel_map():
    """segment(1, box (z0, y0, x0, z1, y1, x1)): the voxels inside the box, on the output as it is the input's size."""
    x = eighths(SHAPE, seed=1)
    box = (1, 2, 3, 5, 7, 9)
    r = occlens.explain(LocalSums3d(), occlens.Volume(x), patch=PATCH, stride=STRIDE, target=targets.segment(1, box))
    region = np.zeros(SHAPE, dtype=bool)
    region[1:5, 2:7, 3:9] = True
    grid = VolumeGrid.build(*SHAPE, PATCH, STRIDE)
    delta, voxels = expected(x, 0.5, grid, region_score(region, 1))
    assert r.target_kind == "segment" and r.target == "segment:1:1,2,3,5,7,9" and r.sub_targets == ("1",)
    assert r.target_info[0] == {"class": 1, "class_name": "1", "pixels": int(region.sum()), "of": region.size}
    assert r.deltas.shape == (1, *grid.shape) and r.pixel_maps.shape == (1, *SHAPE)
    np.testing.assert_allclose(r.delta, delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.pixel_map, voxels, rtol=0, atol=1e-12)
    assert r.predicted is None and r.probabilities is None and r.label_map is None


def test_the_default_region_is_the_clean_prediction_frozen():
    """segment(cls): the voxels predicted cls on the clean volume, the same region for every occluded copy; the
    torchvision-style {"out": ...} output too."""
    x = eighths(SHAPE, seed=2)
    predicted = logits_of(local_sums(x)).argmax(0)
    cls = int(np.bincount(predicted.ravel(), minlength=3)[1:].argmax()) + 1
    r = occlens.explain(LocalSums3d(wrapped=True), occlens.Volume(x), patch=PATCH, stride=STRIDE,
                        target=f"segment:{cls}")  # fmt: skip
    delta, voxels = expected(x, 0.5, r.grid, region_score(predicted == cls, cls))
    np.testing.assert_allclose(r.delta, delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.pixel_map, voxels, rtol=0, atol=1e-12)
    assert r.target_info[0]["pixels"] == int((predicted == cls).sum())


def test_a_half_size_output_maps_the_region_by_voxel_centres():
    """A stride-2 output (d x h x w = D/2 x H/2 x W/2): output voxel i is centred on input voxel 2i + 1, so a box
    takes the output voxels whose centres it holds and a D x H x W mask is read at those centres, as a 2-D
    segmenter's smaller output is."""
    x = eighths(SHAPE, seed=3)
    box = (0, 2, 1, 4, 8, 6)  # centres 1, 3 in depth; 3, 5, 7 in rows; 1, 3, 5 in columns
    region = np.zeros((3, 4, 5), dtype=bool)
    region[0:2, 1:4, 0:3] = True
    r = occlens.explain(LocalSums3d(stride=2), occlens.Volume(x), patch=PATCH, stride=STRIDE,
                        target=targets.segment(2, box))  # fmt: skip
    delta, voxels = expected(x, 0.5, r.grid, region_score(region, 2, stride=2))
    assert r.target_info[0]["pixels"] == region.sum() == 18 and r.target_info[0]["of"] == 60
    np.testing.assert_allclose(r.delta, delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.pixel_map, voxels, rtol=0, atol=1e-12)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0:4, 2:8, 1:6] = True  # the same output voxels, given as the input's mask
    by_mask = occlens.explain(LocalSums3d(stride=2), occlens.Volume(x), patch=PATCH, stride=STRIDE,
                              target=targets.segment(2, mask))  # fmt: skip
    np.testing.assert_array_equal(by_mask.delta, r.delta)
    assert by_mask.target.startswith("segment:2:mask=")


def test_every_predicted_segment_from_one_set_of_forward_passes():
    """cls=None: one sub-target per class predicted on the clean volume, each exact; the model is called once for
    the clean volume and once per batch: 1 + ceil(windows / batch)."""
    x = eighths(SHAPE, seed=4)
    predicted = logits_of(local_sums(x)).argmax(0)
    classes = [int(c) for c in np.unique(predicted)]
    assert len(classes) >= 2  # the data gives several segments
    model = LocalSums3d()
    r = occlens.explain(model, occlens.Volume(x), patch=PATCH, stride=STRIDE, target="segment", batch_size=4)
    grid = VolumeGrid.build(*SHAPE, PATCH, STRIDE)
    assert model.calls == 1 + math.ceil(grid.size / 4)
    assert r.sub_targets == tuple(map(str, classes)) and r.target == "segment"
    assert r.deltas.shape == (len(classes), *grid.shape) and r.pixel_maps.shape == (len(classes), *SHAPE)
    for t, k in enumerate(classes):
        delta, voxels = expected(x, 0.5, grid, region_score(predicted == k, k))
        np.testing.assert_allclose(r.deltas[t], delta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.pixel_maps[t], voxels, rtol=0, atol=1e-12)
    default = occlens.explain(LocalSums3d(), occlens.Volume(x), patch=PATCH, stride=STRIDE)  # a segmenter's default
    np.testing.assert_allclose(default.deltas, r.deltas, rtol=0, atol=1e-12)  # another batch size
    assert default.target_kind == "segment"


def test_a_segment_result_saves_and_loads(tmp_path):
    x = eighths(SHAPE, seed=5)
    r = occlens.explain(LocalSums3d(), occlens.Volume(x), patch=PATCH, stride=STRIDE, target="segment")
    r.save(tmp_path / "seg")
    back = OcclusionResult.load(tmp_path / "seg")
    assert back.sub_targets == r.sub_targets and back.target_kind == "segment" and back.target_info == r.target_info
    np.testing.assert_allclose(back.pixel_maps, r.pixel_maps, rtol=0, atol=1e-12)


def test_band_occlusion_of_a_volume_explains_a_segment():
    """patch="bands" on a 2-channel volume: one δL per channel, s(x with channel b gray) − s(x), exactly."""
    x = np.concatenate([eighths(SHAPE, seed=11), eighths(SHAPE, seed=12) / 2])
    predicted = logits_of(local_sums(x)).argmax(0)
    s = region_score(predicted == 1, 1)
    r = occlens.explain(LocalSums3d(), occlens.Volume(x), patch="bands", target="segment:1")
    gray = [np.concatenate([np.full_like(x[:1], 0.5), x[1:]]), np.concatenate([x[:1], np.full_like(x[1:], 0.5)])]
    np.testing.assert_allclose(r.delta, [s(g) - s(x) for g in gray], rtol=0, atol=1e-12)
    assert r.target_kind == "segment" and r.delta.shape == (2,)


# --- the Captum oracle ------------------------------------------------------------------------------------------


class TinySegmenter3d(nn.Module):
    """conv3d -> relu -> conv3d: random weights, 3 classes per voxel, float64."""

    def __init__(self, channels: int = 2, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Conv3d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))
        self.double().eval()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("region", [None, (1, 0, 2, 5, 6, 9)])
def test_voxel_map_is_minus_captum_occlusion_of_the_region_score(region):
    """DESIGN §1's oracle: Captum's Occlusion with a 4-D window (C, pd, ph, pw) over a forward that reduces the
    output to the same s (the region's mean log_softmax of cls), the fill as baseline."""
    model = TinySegmenter3d(seed=7)
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(8)).float().double()
    patch, stride = (2, 4, 4), (2, 2, 3)  # windows that Captum's floor count covers exactly
    with torch.no_grad():
        predicted = model(x[None])[0].argmax(0)
    cls = int(torch.bincount(predicted.flatten(), minlength=3).argmax())
    r = occlens.explain(model, occlens.Volume(x), patch=patch, stride=stride, fill="mean",
                        target=targets.segment(cls, region))  # fmt: skip
    if region is None:
        mask = predicted == cls
    else:
        mask = torch.zeros(SHAPE, dtype=torch.bool)
        mask[1:5, 0:6, 2:9] = True
    fill = x.float().mean((1, 2, 3), keepdim=True).expand_as(x).double()

    def s(z):
        lp = torch.log_softmax(model(z).double(), dim=1)[:, cls]
        return (lp * mask).flatten(1).sum(1) / mask.sum()

    attribution = Occlusion(s).attribute(x[None], sliding_window_shapes=(2, *patch), strides=(2, *stride),
                                         baselines=fill[None], perturbations_per_eval=4)[0]  # fmt: skip
    for c in range(2):  # every channel gets the same map
        np.testing.assert_allclose(r.pixel_map, -attribution[c].numpy(), rtol=0, atol=1e-8)


# --- regression, margin and functions on volumes ----------------------------------------------------------------


def test_margin_is_the_map_of_q_minus_the_map_of_k_from_the_same_passes():
    model = TinyConv3dNet(1, seed=4)
    x = occlens.Volume(torch.rand(1, 7, 9, 8, generator=torch.Generator().manual_seed(5)).double())
    run = lambda target, **kw: occlens.explain(model, x, patch=(3, 4, 5), stride=(2, 3, 2), target=target, **kw)  # noqa: E731
    m = run(targets.margin(0, 2))
    q, k = run(0), run(2)
    assert m.target_kind == "margin" and m.target == "margin:0,2" and m.target_info[0]["q"] == 0
    np.testing.assert_allclose(m.delta, q.delta - k.delta, rtol=0, atol=1e-12)
    label = next(c for c in range(4) if c != q.predicted)
    by_label = run("margin", label=label)  # k defaults to the true label, q to the prediction
    np.testing.assert_allclose(by_label.delta, run(targets.margin(q.predicted, label)).delta, rtol=0, atol=1e-12)


def test_regression_and_a_function_by_their_spelling():
    """regression:J is output J in the model's units; a function of the output is its own columns."""
    model = TinyConv3dNet(1, seed=6)
    x = occlens.Volume(torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(7)).double())
    reg = occlens.explain(model, x, patch=4, target="regression:3")
    raw = occlens.explain(model, x, patch=4, target=lambda out: out[:, 3])
    assert reg.target_kind == "regression" and reg.target == "regression:3" and raw.target_kind == "callable"
    np.testing.assert_allclose(reg.delta, raw.delta, rtol=0, atol=1e-12)
    with torch.no_grad():
        y = model(x.unit()[None].double())[0, 3].item()
    assert reg.loss == pytest.approx(-y)  # L = −s = −y_3


# --- refusals ---------------------------------------------------------------------------------------------------


class DepthMean(nn.Module):
    """A 2-D segmenter's output from a volume: the depth averaged away."""

    def forward(self, x):
        return LocalSums3d()(x).mean(2)


@pytest.mark.parametrize(
    ("model", "target", "words"),
    [
        (LocalSums3d(), "box", "box is not available for volumes: there is no standard 3-D detection output"),
        (LocalSums3d(), "box:1,2,3,4", "segment:CLASS:Z0,Y0,X0,Z1,Y1,X1"),
        (LocalSums3d(), "segment:7", "target segment's class 7 is out of range: the model has 3 classes"),
        (LocalSums3d(), targets.segment(1, np.ones(SHAPE[1:], dtype=bool)),
         r"region is a mask of shape \(8, 10\), but the volume is 6 x 8 x 10"),
        (LocalSums3d(), targets.segment(1, (0, 0, 4, 4)), r"is a box of 4 numbers, but the input is a volume; give a "
         r"box \(z0, y0, x0, z1, y1, x1\)"),
        (LocalSums3d(), targets.segment(1, (0, 0, 0, 7, 8, 10)), "is outside the volume, which is 6 deep, 8 high"),
        (LocalSums3d(stride=2), targets.segment(1, (0, 0, 0, 1, 8, 10)),
         "covers no voxel of the model's 3 x 4 x 5 output"),
        (TinyConv3dNet(1), "segment", r"segment needs per-voxel class scores \(N x classes x d x h x w\), but the "
         r"model returned a tensor of shape \(1, 4\)"),
        (DepthMean().eval(), "segment", r"needs per-voxel class scores .* returned a tensor of shape \(1, 3, 8, 10\)"),
    ],
)  # fmt: skip
def test_targets_that_do_not_fit_a_volume_are_one_line(model, target, words):
    x = occlens.Volume(eighths(SHAPE, seed=9))
    with pytest.raises(ConfigError, match=words) as err:
        occlens.explain(model, x, patch=PATCH, target=target)
    one_line(err)


def test_a_class_no_voxel_is_predicted_is_one_line():
    x = eighths(SHAPE, seed=9) * 0 + 0.5  # every local sum in the middle band: class 0 nearly everywhere
    predicted = logits_of(local_sums(x)).argmax(0)
    absent = next(c for c in range(3) if c not in predicted)
    with pytest.raises(ConfigError, match=f"segment:{absent}: no voxel of the clean volume is predicted") as err:
        occlens.explain(LocalSums3d(), occlens.Volume(x), patch=PATCH, target=targets.segment(absent))
    one_line(err)


def test_empty_and_misspelt_volume_boxes_are_one_line():
    with pytest.raises(ConfigError, match=r"is empty: a volume's box is \(z0, y0, x0, z1, y1, x1\)") as err:
        targets.segment(1, (2, 0, 0, 2, 5, 5))
    one_line(err)
    words = r"must be a box \(x0, y0, x1, y1\) on an image, \(z0, y0, x0, z1, y1, x1\) on a volume, or a boolean mask"
    with pytest.raises(ConfigError, match=words + "; got 5 numbers") as err:
        targets.segment(1, (0, 0, 1, 2, 3))
    one_line(err)
    with pytest.raises(ConfigError, match="a box: four numbers, six on a volume"):
        parse_target("segment:1:1,2,3,4,5")
    t = parse_target("segment:1:0,1,2,3,4,5")
    assert t.region == (0, 1, 2, 3, 4, 5) and parse_target(t.spec()) == t


# --- the command ------------------------------------------------------------------------------------------------


class LocalSumsFile(nn.Module):
    """:class:`LocalSums3d` with a Conv3d of ones, which says "a volume model" to the loader; TorchScript-able."""

    def __init__(self):
        super().__init__()
        self.sums = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.sums.weight.fill_(1.0)
        self.eval()

    def forward(self, x):
        t = self.sums(x)
        return torch.cat([torch.ones_like(t), t - 13.5, 13.5 - t], dim=1)


@pytest.fixture
def segmenter_file(tmp_path):
    path = tmp_path / "seg3d.pt"
    torch.jit.script(LocalSumsFile()).save(str(path))
    return path


@pytest.fixture
def scan(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "scan.nii.gz"
    data = eighths(SHAPE, seed=10)[0].transpose(2, 1, 0)  # NIfTI's (i, j, k) = (w, h, d)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def test_the_command_explains_a_segment_of_a_scan(tmp_path, segmenter_file, scan, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(scan), "--model", str(segmenter_file), "--patch", "2,4,3", "--target",
                 "segment:1:1,2,3,5,7,9", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "scan.json").read_text())
    assert saved["target_kind"] == "segment" and saved["target"] == "segment:1:1,2,3,5,7,9"
    assert {p.name for p in out.iterdir()} == {"scan.json", "scan.npz", "scan.png", "scan.nii.gz"}
    direct = occlens.explain(LocalSums3d(), occlens.Volume(eighths(SHAPE, seed=10)), patch=(2, 4, 3),
                             target="segment:1:1,2,3,5,7,9")  # fmt: skip
    np.testing.assert_allclose(OcclusionResult.load(out / "scan").pixel_map, direct.pixel_map, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("box", "box is not available for volumes"),
        ("segment:7", "class 7 is out of range"),
        ("segment:1:0,0,3,4", "is a box of 4 numbers, but the input is a volume"),
        ("segment:1:0,0,0,9,8,10", "is outside the volume"),
    ],
)
def test_the_command_refuses_a_target_that_does_not_fit_in_one_line(tmp_path, segmenter_file, scan, capsys,
                                                                     target, words):  # fmt: skip
    code = main(["explain", str(scan), "--model", str(segmenter_file), "--patch", "2,4,3", "--target", target,
                 "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("occlens: error: ") and words in err[0], err
    assert not list((tmp_path / "o").glob("scan*"))
