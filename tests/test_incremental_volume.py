"""The exact incremental engine on volumes: the same map as the dense engine (≤ 1e-4, float32) on 3-D ResNet- and
DenseNet-style networks and MONAI's DenseNet121, non-cubic volumes and windows, clipped edges, stride ≠ patch; the
caller's model unchanged; auto; the fallbacks; the 3-D block arithmetic against the 2-D one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import occlens
from occlens.core.grid import VolumeGrid
from occlens.engines.incremental_volume import plan_volume, volume_cost
from occlens.graph.regions import Block, Box, Reach, joined, spread, through, union

TOLERANCE = 1e-4


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics and affine parameters drawn at random (so folding them
    matters), weights scaled to keep activations of order one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout)
        self.conv2, self.bn2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm3d(cout)
        self.short = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet3d(nn.Module):
    """Conv3d + BatchNorm3d + ReLU, residual adds, MaxPool3d, AdaptiveAvgPool3d, Linear."""

    def __init__(self, channels: int = 1, classes: int = 3, ceil_mode: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(channels, 6, 3, 1, 1), nn.BatchNorm3d(6), nn.ReLU(inplace=True),
            nn.MaxPool3d(3, 2, 1, ceil_mode=ceil_mode),
        )  # fmt: skip
        self.layer1, self.layer2 = Residual(6, 6), Residual(6, 10, stride=2)
        self.pool, self.fc = nn.AdaptiveAvgPool3d(1), nn.Linear(10, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm3d(cin), nn.ReLU(), nn.Conv3d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm3d(2 * growth), nn.ReLU(), nn.Conv3d(2 * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet3d(nn.Module):
    """Concatenations, pre-activation batch norms, AvgPool3d transitions, a dilated grouped convolution."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 8, (3, 5, 3), stride=(1, 2, 1), padding=(1, 2, 1))
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.trans = nn.Sequential(nn.BatchNorm3d(16), nn.ReLU(), nn.Conv3d(16, 8, 1), nn.AvgPool3d(2))
        self.dilated = nn.Conv3d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.block2 = DenseLayer(8, 4)
        self.head = nn.Sequential(nn.BatchNorm3d(12), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                  nn.Linear(12, classes))  # fmt: skip

    def forward(self, x):
        y = self.trans(self.block1(self.stem(x)))
        return self.head(self.block2(y + 0.5 * self.dilated(y)))


def volume(shape, seed: int = 0) -> occlens.Volume:
    return occlens.Volume(torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed)))


def both(model, x, **kw):
    dense = occlens.explain(model, x, engine="dense", **kw)
    inc = occlens.explain(model, x, engine="incremental", **kw)
    return dense, inc


def assert_same(dense, inc):
    assert inc.engine == "incremental" and dense.engine == "dense"
    assert inc.delta.shape == dense.delta.shape
    np.testing.assert_allclose(inc.delta, dense.delta, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(inc.pixel_map, dense.pixel_map, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("shape", "patch", "stride"),
    [
        ((12, 16, 20), (4, 4, 4), (4, 4, 4)),  # cubic windows tiling a non-cubic volume
        ((11, 14, 17), (4, 6, 5), (3, 4, 4)),  # non-cubic windows, stride < patch, the last ones clipped
        ((9, 13, 10), (5, 3, 4), (5, 3, 4)),  # stride = patch, clipped on every axis
    ],
)
def test_resnet_style_incremental_equals_dense(shape, patch, stride):
    model = randomised(ResNet3d())
    dense, inc = both(model, volume(shape), patch=patch, stride=stride)
    assert_same(dense, inc)
    assert dense.grid.shape == inc.grid.shape


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_global_pool_of_regions_adds_their_change_to_the_clean_mean():
    """Windows small against the volume: regions reach the global pool, which the plan does not make dense."""
    model = randomised(ResNet3d(), seed=14)
    x = volume((48, 40, 56), seed=15)
    grid = VolumeGrid.build(48, 40, 56, 12, 12)
    unit = x.unit()
    assert "mean" in [s.kind for s in plan_volume(model, unit, grid, model(unit[None])).steps]
    assert_same(*both(model, x, patch=12, stride=12))


def test_resnet_with_ceil_mode_pooling_and_a_fill():
    model = randomised(ResNet3d(channels=2, ceil_mode=True), seed=3)
    x = occlens.Volume(torch.rand(2, 10, 13, 15, generator=torch.Generator().manual_seed(4)))
    dense, inc = both(model, x, patch=(3, 5, 4), stride=(2, 4, 3), fill="mean")
    assert_same(dense, inc)


@pytest.mark.parametrize(("shape", "patch", "stride"), [((12, 16, 14), (4, 5, 4), (3, 4, 4)), ((8, 20, 12), 4, 4)])
def test_densenet_style_incremental_equals_dense(shape, patch, stride):
    model = randomised(DenseNet3d(), seed=1)
    assert_same(*both(model, volume(shape, seed=2), patch=patch, stride=stride))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_monai_densenet121_incremental_equals_dense():
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = randomised(monai.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2), seed=5)
    x = volume((32, 32, 32), seed=6)
    dense, inc = both(model, x, patch=(8, 12, 10), stride=(8, 12, 10))  # 4 x 3 x 4 windows, clipped on two axes
    assert_same(dense, inc)


def test_the_models_are_unchanged_and_keep_their_training_flag():
    model = randomised(ResNet3d(), seed=7)
    model.layer1.train()  # partly in training mode: run in eval mode, restored after
    before, flags = copy.deepcopy(model.state_dict()), {n: m.training for n, m in model.named_modules()}
    with pytest.warns(UserWarning, match="training mode"):
        r = occlens.explain(model, volume((8, 8, 8)), patch=4, engine="incremental")
    assert r.engine == "incremental"
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert isinstance(model.stem[1], nn.BatchNorm3d)  # nothing folded into the caller's model


def test_auto_on_a_volume_gives_the_dense_map():
    model = randomised(ResNet3d(), seed=8)
    x = volume((12, 12, 16), seed=9)
    auto = occlens.explain(model, x, patch=4, stride=(4, 3, 4), engine="auto")
    dense = occlens.explain(model, x, patch=4, stride=(4, 3, 4), engine="dense")
    assert auto.engine in ("dense", "incremental")
    np.testing.assert_allclose(auto.delta, dense.delta, atol=TOLERANCE, rtol=0)


def test_an_untraceable_model_runs_dense_with_one_warning():
    class Branchy(ResNet3d):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    model = randomised(Branchy(), seed=10)
    x = volume((8, 8, 8), seed=11)
    with pytest.warns(UserWarning, match="not possible") as record:
        r = occlens.explain(model, x, patch=4, engine="incremental")
    assert len([w for w in record if "incremental" in str(w.message)]) == 1
    assert r.engine == "dense"
    np.testing.assert_array_equal(r.delta, occlens.explain(model, x, patch=4, engine="dense").delta)


def test_band_occlusion_with_incremental_runs_dense_with_a_warning():
    model = randomised(ResNet3d(channels=2), seed=12)
    x = occlens.Volume(torch.rand(2, 6, 6, 6))
    with pytest.warns(UserWarning, match="band occlusion ran on the dense engine"):
        r = occlens.explain(model, x, patch="bands", engine="incremental")
    assert r.engine == "dense" and r.delta.shape == (2,)


def test_plan_recomputes_blocks_and_bounds_its_macs():
    """A window changes a block of every layer until the global pool; the MAC bound is dense over incremental."""
    model = randomised(ResNet3d(), seed=13)
    x = torch.rand(1, 64, 48, 64)  # planned only: one clean pass
    grid = VolumeGrid.build(64, 48, 64, 8, 8)
    plan = plan_volume(model, x, grid, model(x[None]))
    kinds = [s.kind for s in plan.steps]
    assert kinds.count("sliding") >= 4 and kinds[-3:] == ["mean", "dense", "dense"]  # pool, flatten, linear
    assert all(s.block is None or len(s.block.extent) == 3 for s in plan.steps)
    cost = volume_cost(plan)
    assert 1 < cost.mac_bound < grid.size and cost.incremental_macs < cost.dense_macs


@pytest.mark.parametrize("seed", range(20))
def test_blocks_on_two_axes_are_the_2d_boxes(seed):
    """spread and joined on two axes are through and union of the 2-D engine."""
    rng = np.random.default_rng(seed)
    height, width, h, w = (int(v) for v in (*rng.integers(6, 30, 2), *rng.integers(1, 6, 2)))
    n = 7
    tops, lefts = rng.integers(0, height - h + 1, n), rng.integers(0, width - w + 1, n)
    rows, cols = (Reach(int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3)),
                        int(rng.integers(0, 3))) for _ in range(2))  # fmt: skip
    out_h = (height + 2 * rows.pad - rows.span - 1) // rows.stride + 1
    out_w = (width + 2 * cols.pad - cols.span - 1) // cols.stride + 1
    if min(out_h, out_w) < 1:
        return
    via = through(Box(height, width, h, w, tops, lefts), rows, cols, out_h, out_w)
    out, starts, size = spread(Block((height, width), (h, w), np.stack([tops, lefts], 1)), (rows, cols), (out_h, out_w))
    assert out.extent == (via.out.h, via.out.w) and size == (via.ctx_h, via.ctx_w)
    np.testing.assert_array_equal(out.starts, np.stack([via.out.tops, via.out.lefts], 1))
    np.testing.assert_array_equal(starts, np.stack([via.ctx_tops, via.ctx_lefts], 1))
    other = Box(height, width, 2, 3, rng.integers(0, height - 1, n), rng.integers(0, width - 2, n))
    u = union([Box(height, width, h, w, tops, lefts), other])
    j = joined([Block((height, width), (h, w), np.stack([tops, lefts], 1)),
                Block((height, width), (2, 3), np.stack([other.tops, other.lefts], 1))])  # fmt: skip
    assert j.extent == (u.h, u.w)
    np.testing.assert_array_equal(j.starts, np.stack([u.tops, u.lefts], 1))


def test_incremental_with_a_lower_precision_is_refused_in_one_line():
    model = randomised(ResNet3d(), seed=16)
    with pytest.raises(occlens.ConfigError, match="engine='incremental' runs the model's own float precision") as err:
        occlens.explain(model, volume((8, 8, 8)), patch=4, engine="incremental", precision="bf16")
    assert "\n" not in str(err.value)
    auto = occlens.explain(model, volume((8, 8, 8)), patch=4, engine="auto", precision="bf16")
    assert auto.engine == "dense"
