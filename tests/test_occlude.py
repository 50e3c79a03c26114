"""The reference occlusion of images and volumes (occlens.core.occlude): exact on analytic models, the Captum
oracle on small 3-D CNNs, batch-size invariant, the same δL as the 2-D engine."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import Occlusion
from conftest import TinyConvNet, random_image

import occlens
from occlens import ConfigError, Grid, ImageError, VolumeGrid
from occlens.core.fill import baseline, check_fill
from occlens.core.occlude import check_fits, occluded_batch, occlusion_delta, window_boxes


class TinyConv3dNet(nn.Module):
    """conv3d -> relu -> conv3d -> relu -> adaptive 2x2x3 pool -> linear: position-sensitive, any volume size."""

    def __init__(self, channels: int = 1, classes: int = 4, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv3d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool3d((2, 2, 3)), nn.Flatten(),
            )  # fmt: skip
            self.head = nn.Linear(4 * 2 * 2 * 3, classes)
            with torch.no_grad():
                self.head.weight.mul_(6.0)
        self.double().eval()

    def forward(self, x):
        return self.head(self.body(x))


class LinearVoxels(nn.Module):
    """Logits ``[0, s(x)]`` with ``s(x) = sum(w * x)``: class 1's log-probability is ``logsigmoid(s)``."""

    def __init__(self, shape, seed: int = 0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def volume(channels, shape, seed):
    return torch.rand(channels, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def brute_linear_delta(w, x, fill, grid):
    """−Σ_window w·(x − fill), window by window with loops over the windows' boxes."""
    out = []
    for f, b, t, bo, left, right in grid.windows():
        box = (slice(None), slice(f, b), slice(t, bo), slice(left, right))
        out.append(-float((w[box] * (x[box] - fill[box])).sum()))
    return np.array(out).reshape(grid.shape)


@pytest.mark.parametrize("fill", ["gray", "mean", "blur", "noise", 0.2, (0.1, 0.7)])
def test_linear_model_delta_is_exact(fill):
    x = volume(2, (5, 6, 7), seed=1)
    grid = VolumeGrid.build(5, 6, 7, (2, 4, 3), (2, 3, 2))  # non-cubic, every axis clipped
    fill_volume = baseline(x, check_fill(fill), seed=3)
    model = LinearVoxels(x.shape, seed=2)
    w = model.w.detach()
    expected = brute_linear_delta(w, x, fill_volume, grid)
    delta, cls = occlusion_delta(model, x, fill_volume, grid, target=lambda out: out[:, 1], batch_size=4)
    assert cls is None and delta.shape == grid.shape
    np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-10)
    # the log-softmax of such a model: log P(1) = logsigmoid(s), so δL = logsigmoid(s - Σ w(x - fill)) - logsigmoid(s)
    s = float((w * x).sum())
    logsig = lambda z: -np.logaddexp(0.0, -z)  # noqa: E731
    delta, cls = occlusion_delta(model, x, fill_volume, grid, target=1, batch_size=5)
    assert cls == 1
    np.testing.assert_allclose(delta, logsig(s + expected) - logsig(s), rtol=0, atol=1e-10)
    assert np.abs(expected).max() > 1e-3


def test_sign_negative_where_the_evidence_is():
    """A model whose class-1 evidence sits in one corner box: occluding that box lowers log P(1): δL < 0 there."""
    x = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    x[:, :2, :3, :3] = 1.0
    model = LinearVoxels(x.shape)
    with torch.no_grad():
        model.w.copy_(x * 3.0)
    grid = VolumeGrid.build(4, 6, 6, (2, 3, 3))
    delta, cls = occlusion_delta(model, x, torch.zeros_like(x), grid)
    assert cls == 1 and delta[0, 0, 0] < 0
    assert np.count_nonzero(delta) == 1 and delta.argmin() == 0


def make_case(i):
    rng = random.Random(500 + i)
    channels = rng.choice([1, 2])
    shape = tuple(rng.randint(4, 9) for _ in range(3))
    while len(set(shape)) < 3:  # non-cubic
        shape = tuple(rng.randint(4, 9) for _ in range(3))
    patch = tuple(rng.randint(1, n) for n in shape)
    stride = tuple(rng.randint(1, p) for p in patch)
    fill = ["gray", "mean", "blur", "noise", 0.3, "per-channel"][i % 6]
    if fill == "per-channel":
        fill = tuple(round(rng.random(), 3) for _ in range(channels))
    return channels, shape, patch, stride, fill, rng.randint(0, 1000)


CASES = [make_case(i) for i in range(12)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}-{c[1]}-p{c[2]}-s{c[3]}-{c[4]}")
def test_voxel_map_is_minus_captum_occlusion(case):
    channels, shape, patch, stride, fill, seed = case
    model = TinyConv3dNet(channels, seed=seed)
    x = volume(channels, shape, seed + 1)
    fill_volume = baseline(x, check_fill(fill), seed)
    grid = VolumeGrid(*shape, patch, stride)
    delta, q = occlusion_delta(model, x, fill_volume, grid, batch_size=7)
    with torch.no_grad():
        assert q == int(model(x[None]).argmax(dim=1))
    attribution = Occlusion(lambda z: torch.log_softmax(model(z), dim=1)).attribute(
        x[None], target=q, sliding_window_shapes=(channels, *patch), strides=(channels, *stride),
        baselines=fill_volume[None], perturbations_per_eval=5,
    )  # fmt: skip
    expected = -attribution[0].detach().numpy()
    got = grid.voxel_map(delta)
    for c in range(channels):
        np.testing.assert_allclose(got, expected[c], rtol=0, atol=1e-7)
    assert np.abs(delta).max() > 1e-4  # not 0 == 0


def test_cases_are_non_cubic_and_clip_edges():
    assert all(len(set(c[1])) == 3 for c in CASES)
    clipped = [c for c in CASES if any((n - p) % s for n, p, s in zip(c[1], c[2], c[3], strict=True))]
    assert len(clipped) >= 4
    assert any(len(set(c[2])) == 3 for c in CASES)  # a window with three different sides


def test_batch_size_and_window_subsets_do_not_change_delta():
    model = TinyConv3dNet(1, seed=9)
    x = volume(1, (6, 5, 7), 10)
    grid = VolumeGrid.build(6, 5, 7, (3, 2, 4), (2, 2, 3))
    fill = baseline(x, "gray")
    reference, _ = occlusion_delta(model, x, fill, grid, batch_size=1)
    for size in (2, 5, grid.size, grid.size + 3):
        np.testing.assert_allclose(occlusion_delta(model, x, fill, grid, batch_size=size)[0], reference, atol=1e-12)
    part = [0, 5, 7]
    some, _ = occlusion_delta(model, x, fill, grid, windows=part, batch_size=2)
    np.testing.assert_allclose(some.reshape(-1)[part], reference.reshape(-1)[part], atol=1e-12)
    assert np.isnan(np.delete(some.reshape(-1), part)).all()


def test_occluded_batch_changes_only_its_window_and_reuses_the_buffer():
    x = volume(2, (4, 5, 6), 0)
    fill = torch.full_like(x, -1.0)
    grid = VolumeGrid.build(4, 5, 6, (2, 3, 4), (1, 2, 2))
    buffer = torch.empty((4, *x.shape), dtype=x.dtype)
    for indices in ([0, 1, 2], [grid.size - 1], [3, 4, 5, 6]):
        batch = occluded_batch(x, fill, grid, indices, out=buffer)
        assert batch.shape == (len(indices), *x.shape) and batch.data_ptr() == buffer.data_ptr()  # no new copies
        for j, i in enumerate(indices):
            f, b, t, bo, left, right = grid.window(i)
            expected = x.clone()
            expected[:, f:b, t:bo, left:right] = -1.0
            assert torch.equal(batch[j], expected)
    previous = None  # restoring only the boxes a previous call occluded gives the same copies
    for indices in ([0, 1, 2], [9, 3], [4, 5, 6, 7], [grid.size - 1]):
        batch = occluded_batch(x, fill, grid, indices, out=buffer, occluded=previous)
        assert torch.equal(batch, occluded_batch(x, fill, grid, indices))
        previous = indices
    boxes = window_boxes(grid, [grid.size - 1])
    assert boxes == [(slice(2, 4), slice(2, 5), slice(2, 6))]


def test_2d_reference_equals_the_engine():
    """On images (a 2-D Grid) the reference gives explain()'s δL: one semantics for both ranks."""
    model = TinyConvNet(channels=3, classes=4, seed=4, dtype=torch.float64)
    image = random_image(3, 11, 14, seed=5)
    result = occlens.explain(model, image, patch=(4, 5), stride=(3, 2), fill="blur", progress=False)
    grid = Grid.build(11, 14, (4, 5), (3, 2))
    x = image.double()
    delta, q = occlusion_delta(model, x, baseline(x, "blur"), grid, batch_size=6)
    assert q == result.predicted
    np.testing.assert_allclose(delta, result.delta, rtol=0, atol=1e-7)  # explain blurs in float32


def test_a_volume_that_does_not_fit_is_one_line():
    ct = 512 * 512 * 300 * 4  # one float32 copy of a 512 x 512 x 300 CT: 300 MB
    check_fits(ct, 16 << 30)  # a quarter of 16 GB holds it
    with pytest.raises(ImageError, match=r"one occluded copy of the input needs about 300 MB .* 25% of the 1,024 MB"):
        check_fits(ct, 1 << 30)
    for size in (0, 2.5, None):
        with pytest.raises(ConfigError, match="batch_size"):
            occlusion_delta(TinyConv3dNet(), volume(1, (4, 4, 4), 0), volume(1, (4, 4, 4), 1),
                            VolumeGrid.build(4, 4, 4, 2), batch_size=size)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_same_delta_and_the_batch_built_on_the_device():
    model = TinyConv3dNet(2, seed=11)
    x = volume(2, (6, 7, 5), 12)
    grid = VolumeGrid.build(6, 7, 5, (3, 4, 2), (2, 3, 2))
    fill = baseline(x, "blur")
    cpu, q = occlusion_delta(model, x, fill, grid, batch_size=4)
    gpu_model = TinyConv3dNet(2, seed=11).cuda()
    batch = occluded_batch(x.cuda(), fill.cuda(), grid, [0, 3])
    assert batch.device.type == "cuda"
    cuda, q_cuda = occlusion_delta(gpu_model, x.cuda(), fill.cuda(), grid, batch_size=4)
    assert q_cuda == q
    np.testing.assert_allclose(cuda, cpu, rtol=0, atol=1e-9)  # float64 on both


def test_a_buffer_too_small_is_refused():
    x = volume(1, (4, 4, 4), 0)
    grid = VolumeGrid.build(4, 4, 4, 2)
    with pytest.raises(ValueError, match="cannot hold 3 copies"):
        occluded_batch(x, x, grid, [0, 1, 2], out=torch.empty((2, *x.shape), dtype=x.dtype))
