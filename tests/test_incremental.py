"""The incremental engine is exact: the same δL as the dense engine, on real architectures and odd geometry.

Models have random weights with the classifier scaled so that the logits spread (a few units), so
a wrong region would move δL by far more than the 1e-4 tolerance.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TinyConvNet, random_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn

import occlens
from occlens.core.fill import baseline
from occlens.core.grid import Grid
from occlens.core.targets import class_scores
from occlens.engines import choice, costmodel, incremental
from occlens.engines.dense import Dense
from occlens.graph.regions import Box, Reach, through, union
from occlens.models import Normalized, load_default_model
from occlens.models.forward import make_forward

TOLERANCE = 1e-4
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# ---------------------------------------------------------------------------------------------
# models


def spread_logits(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """Scale the last linear layer so the logits on ``image`` have a standard deviation of 3."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        k = 3.0 / float(model(image[None]).std())
        last.weight.mul_(k)
        last.bias.mul_(k)
    return model


def torchvision_model(name: str, image: torch.Tensor) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, weights=None)
    return spread_logits(Normalized(net, *IMAGENET).eval(), image)


class Zoo(nn.Module):
    """Every layer kind the engine knows, on purpose at odd sizes: SAME, dilation, groups, ceil mode, cat, add."""

    def __init__(self, classes: int = 7):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.stem = Conv2dSame(3, 8, 3, stride=2)  # TF SAME: asymmetric padding on even sizes
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.ReLU6(inplace=True)
            self.dw = nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8)
            self.same = nn.Conv2d(8, 8, (3, 4), padding="same")  # even kernel: one more column after
            self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
            self.a = nn.Conv2d(8, 6, 1)
            self.b = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(8, 6, 3, padding=1))
            self.grouped = nn.Conv2d(12, 12, 3, stride=2, groups=3, bias=False)
            self.pool_same = MaxPool2dSame(3, stride=1)
            self.skip = nn.Conv2d(12, 12, (1, 3), padding=(0, 1))
            self.head = nn.Linear(12, classes)
            for bn in [self.bn]:
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.data.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = torch.relu(self.same(self.dw(x)) + 0.5 * x)
        x = self.pool(x)
        x = torch.cat([self.a(x), torch.sigmoid(self.b(x))], dim=1)
        x = self.pool_same(self.grouped(x))
        x = x + self.skip(x)
        return self.head(x.mean((2, 3)))


class Unknown(nn.Module):
    """A CNN with ops the engine does not know in the middle: a spatial roll and a group norm."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(4)
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 5)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.roll(x, shifts=(1, 2), dims=(2, 3))
        x = torch.relu(self.c2(self.norm(x)))
        return self.head(x.amax((2, 3)))


class Untraceable(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.net = TinyConvNet()
        self.eval()

    def forward(self, x):
        return self.net(x) if x.mean() > 0 else -self.net(x)


class SharedInPlace(nn.Module):
    """An in-place op on a tensor another op reads afterwards: the engine must refuse it."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(5)
            self.c1 = nn.Conv2d(3, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.c1(x)
        z = torch.relu_(y)
        w = self.c2(y)
        return self.head(torch.cat([z.mean((2, 3)), w.mean((2, 3))], 1))


class OneAtATime(nn.Module):
    """Refuses batches of more than one image, in a way torch.fx traces: fails inside the incremental engine too."""

    def __init__(self):
        super().__init__()
        self.net = TinyConvNet()
        self.eval()

    def forward(self, x):
        torch._assert(x.shape[0] == 1, "one image at a time")
        return self.net(x)


class DeviceQuery(nn.Module):
    """Reads a feature map's device to build a tensor: the engine must not hand it a stand-in."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(6)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)
        self.eval()

    def forward(self, x):
        y = self.conv(x)
        return self.head((y + torch.ones(1, device=y.device)).mean((2, 3)))


# ---------------------------------------------------------------------------------------------
# helpers


def both(model, image, patch, stride, **kwargs):
    """(incremental result, dense result) of occlens.explain."""
    inc = occlens.explain(model, image, patch=patch, stride=stride, engine="incremental", **kwargs)
    dense = occlens.explain(model, image, patch=patch, stride=stride, engine="dense", **kwargs)
    return inc, dense


def plan_and_dense(model, image, patch, stride, dense_fraction=incremental.DENSE_FRACTION, batch=7):
    """(plan, incremental log-probs, dense log-probs) of every class 0..4 via the engines directly."""
    grid = Grid.build(image.shape[1], image.shape[2], patch, stride)
    fill = baseline(image, "gray")
    with torch.inference_mode():
        reference = model(image[None])
    plan = incremental.build(model, image, grid, reference, dense_fraction)
    classes = list(range(5))
    got, _ = incremental.Incremental(plan, batch).occluded_scores(None, fill, class_scores(classes, "logits"))
    forward = make_forward(model, torch.device("cpu"), True, "fp32", False)
    want, _ = Dense(forward, grid, batch).occluded_scores(image, fill, class_scores(classes, "logits"))
    return plan, got, want


def kinds(plan) -> dict[str, int]:
    """How many steps of each kind the plan's largest part has."""
    out: dict[str, int] = {}
    for step in max(plan.parts, key=lambda p: len(p.windows)).steps:
        out[step.kind] = out.get(step.kind, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# exactness on the architectures of the issue


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "mobilenet_v2"])
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_torchvision_models_exact_non_square(name):
    """64 x 80 image, windows 13 x 9 at stride 5 x 7 (neither divides the size): every edge window clipped."""
    image = random_image(3, 64, 80, seed=1)
    model = torchvision_model(name, image)
    inc, dense = both(model, image, (13, 9), (5, 7))
    assert inc.engine == "incremental" and dense.engine == "dense"
    assert inc.predicted == dense.predicted
    assert np.ptp(dense.delta) > 0.05  # the map is not flat: a wrong region would show
    assert np.abs(inc.delta - dense.delta).max() <= TOLERANCE
    np.testing.assert_allclose(inc.pixel_map, dense.pixel_map, atol=TOLERANCE)


@pytest.mark.slow
def test_default_model_exact_at_224_on_a_photo():
    """The default EfficientNet-Lite0 (TF SAME padding) on a bundled photo at its own 224 x 224."""
    from occlens.core.samples import sample

    loaded = load_default_model()
    image = loaded.preprocess(Image.open(sample("chelsea").path))
    inc, dense = both(loaded.module, image, 32, 24, label=sample("chelsea").label)
    assert inc.engine == "incremental"
    assert np.abs(inc.delta - dense.delta).max() <= TOLERANCE
    assert np.abs(inc.label_map.delta - dense.label_map.delta).max() <= TOLERANCE
    assert np.ptp(dense.delta) > 0.1


def test_default_model_plan_runs_most_layers_on_regions():
    """At 224 with 16 x 16 windows most of Lite0 runs on regions, and the MAC count says what it saves."""
    loaded = load_default_model()
    image = random_image(3, 224, 224, seed=2)
    plan = incremental.build(loaded.module, image, Grid.build(224, 224, 16, 8))
    k = kinds(plan)
    assert k["sliding"] >= 20 and k["pointwise"] >= 20  # of 49 convolutions; the 7 x 7 and 14 x 14 ones go dense
    cost = costmodel.cost(plan)
    assert 1.3 < cost.mac_saving < 3.0


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_dense_mac_count_agrees_with_pytorchs_flop_counter(name):
    """The plan's own MAC count (per layer, from shapes) and PyTorch's FLOP counter (what auto checks
    on a GPU before planning) are independent counts of the same dense forward pass."""
    image = random_image(3, 64, 80, seed=1)
    model = torchvision_model(name, image)
    plan = incremental.build(model, image, Grid.build(64, 80, 16, 8))
    counted = costmodel.dense_macs(model, image)
    assert counted == pytest.approx(costmodel.cost(plan).dense_macs, rel=0.01)
    assert counted > 1e8


COUNTED_IN_A_FRESH_PROCESS = """
import json, sys
import torch
from torch import nn
import occlens
from occlens.engines import costmodel

class Mixed(nn.Module):  # a convolution, matrix products and a linear layer: what the formulas count
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)  # N x HW x 8
        t = torch.bmm(t, t.transpose(1, 2)).softmax(-1) @ t + t @ torch.eye(8)
        return self.head(t.mean(1))

torch.manual_seed(0)
model, image = Mixed().eval(), torch.rand(3, 12, 16)
result = occlens.explain(model, image, patch=4, engine="auto", progress=False)  # counts on its clean pass
dynamo = "torch._dynamo" in sys.modules
from torch.utils.flop_counter import FlopCounterMode
with torch.inference_mode(), FlopCounterMode(display=False) as counter:
    model(image[None])
print(json.dumps([costmodel.dense_macs(model, image), counter.get_total_flops() / 2, dynamo, result.engine]))
"""


def test_the_mac_count_is_pytorchs_and_imports_no_dynamo():
    """The first auto explanation of a process counts MACs with PyTorch's FLOP counter's formulas, the same total,
    without importing torch._dynamo (which the counter's dispatch imports on first use: over a CPU-second)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(occlens.__file__).parent.parent)
    out = subprocess.run([sys.executable, "-c", COUNTED_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": src}, check=True)  # fmt: skip
    ours, pytorchs, dynamo, engine = json.loads(out.stdout.strip().splitlines()[-1])
    assert ours == pytorchs > 0 and not dynamo and engine == "dense"


class Shared(nn.Module):
    """conv -> BN (foldable), and a conv whose output feeds both a BN and a residual add (not foldable)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(5)
            self.a, self.bn_a = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.b, self.bn_b = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, affine=False)
            self.head = nn.Linear(24, 5)
            for bn in (self.bn_a, self.bn_b):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.3, 3.0)
            self.bn_a.weight.data.uniform_(0.5, 2.0)
            self.bn_a.bias.data.uniform_(-0.5, 0.5)
        self.eval()

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        z = self.b(y)
        return self.head(F.adaptive_avg_pool2d(self.bn_b(z) + z, 2).flatten(1))


def test_batch_norms_fold_into_their_convolutions_exactly_and_the_model_stays():
    image = random_image(3, 20, 23, seed=4)
    model = spread_logits(Shared(), image)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = incremental.build(model, image, Grid.build(20, 23, 5, 3))
    norms = [m for m in plan.traced.modules.values() if isinstance(m, nn.BatchNorm2d)]
    assert norms == [model.bn_b]  # bn_a folded into a; b also feeds the add, so bn_b stays
    fused = plan.traced.modules[next(n for n in plan.traced.graph.nodes if n.target == "a")]
    assert fused is not model.a
    x = torch.randn(4, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model.bn_a(model.a(x)), rtol=1e-5, atol=1e-5)
    inc, dense = both(model, image, 8, 4)
    assert inc.engine == "incremental" and np.abs(inc.delta - dense.delta).max() <= TOLERANCE
    assert np.ptp(dense.delta) > 5e-3
    assert model.bn_a in model.modules() and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unknown_op_goes_dense_and_stays_exact():
    image = random_image(3, 30, 41, seed=3)
    model = spread_logits(Unknown(), image)
    plan, got, want = plan_and_dense(model, image, (6, 5), (4, 3))
    k = kinds(plan)
    assert k["sliding"] >= 1 and k["dense"] >= 3  # conv before the roll is incremental, the rest dense
    assert np.abs(got - want).max() <= TOLERANCE
    inc, dense = both(model, image, (6, 5), (4, 3))
    assert inc.engine == "incremental" and np.abs(inc.delta - dense.delta).max() <= TOLERANCE


# ---------------------------------------------------------------------------------------------
# geometry: every layer kind, odd sizes, every edge


@pytest.mark.parametrize(
    ("height", "width", "patch", "stride"),
    [(37, 50, (5, 7), (3, 4)), (48, 33, (8, 8), (8, 8)), (41, 41, (9, 6), (2, 5)), (29, 64, (29, 10), (1, 10))],
)
@pytest.mark.parametrize("dense_fraction", [incremental.DENSE_FRACTION, 1.0])
def test_every_layer_kind_exact(height, width, patch, stride, dense_fraction):
    image = random_image(3, height, width, seed=height)
    model = spread_logits(Zoo(), image)
    plan, got, want = plan_and_dense(model, image, patch, stride, dense_fraction)
    assert np.abs(got - want).max() <= TOLERANCE
    if dense_fraction == 1.0:  # nothing made dense before the global mean: every kind ran on regions
        sliding = {type(s.module).__name__ for p in plan.parts for s in p.steps if s.kind == "sliding"}
        assert sliding == {"Conv2dSame", "Conv2d", "MaxPool2d", "AvgPool2d", "MaxPool2dSame"}
        assert {"pointwise", "cat"} <= set(kinds(plan))


def test_grouped_windows_run_exactly():
    """Many windows: the plan splits them into groups of alike windows, each part with its own boxes."""
    image = random_image(3, 96, 128, seed=11)
    model = spread_logits(Zoo(), image)
    plan, got, want = plan_and_dense(model, image, 8, 4, batch=40)
    assert len(plan.parts) > 1
    assert np.abs(got - want).max() <= TOLERANCE


def test_window_groups_partition_the_grid_and_tighten_the_boxes():
    """Windows near an edge or at another phase of the strides change less: groups of alike windows save MACs."""
    image = random_image(3, 224, 224, seed=12)
    model = torchvision_model("resnet18", image)
    grid = Grid.build(224, 224, 16, 8)
    grouped = incremental.build(model, image, grid, group_size=32)
    single = incremental.build(model, image, grid, group_size=10**6)
    assert len(single.parts) == 1 and len(grouped.parts) == 16
    windows = np.sort(np.concatenate([p.windows for p in grouped.parts]))
    np.testing.assert_array_equal(windows, np.arange(grid.size))
    for part in grouped.parts:  # a group is a set of window rows times a set of window columns
        rows, cols = np.unique(part.windows // grid.cols), np.unique(part.windows % grid.cols)
        assert len(part.windows) == len(rows) * len(cols)
    assert costmodel.cost(grouped).mac_saving > 1.1 * costmodel.cost(single).mac_saving


@pytest.mark.parametrize("fill", ["gray", "blur", "noise", (0.1, 0.9, 0.3)])
def test_fills_and_labels_exact(fill):
    image = random_image(3, 33, 47, seed=8)
    model = spread_logits(Zoo(), image)
    inc, dense = both(model, image, (7, 6), (5, 4), fill=fill, label=2)
    assert inc.engine == "incremental"
    assert inc.label != inc.predicted and inc.label_map is not None  # so K's map is compared too
    for a, b in [(inc.target_map, dense.target_map), (inc.label_map, dense.label_map)]:
        assert np.abs(a.delta - b.delta).max() <= TOLERANCE


def test_batch_size_and_subsets_do_not_change_values():
    image = random_image(3, 40, 52, seed=9)
    model = spread_logits(Zoo(), image)
    grid = Grid.build(40, 52, (6, 9), (4, 5))
    fill = baseline(image, "gray")
    plan = incremental.build(model, image, grid)
    runs = [
        incremental.Incremental(plan, b).occluded_scores(None, fill, class_scores([0, 3], "logits"))[0]
        for b in (1, 5, grid.size)
    ]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-6)
    subset = np.array([grid.size - 1, 0, 17, 5])
    part, _ = incremental.Incremental(plan, 3).occluded_scores(
        None, fill, class_scores([0, 3], "logits"), windows=subset
    )
    np.testing.assert_allclose(part, runs[0][:, subset], atol=1e-6)
    # a plan made for a subset (as fast=True makes it for its first pass) runs it, and any other windows
    planned = incremental.build(model, image, grid, group_size=2, windows=subset)
    np.testing.assert_array_equal(planned.windows, np.sort(subset))
    part, _ = incremental.Incremental(planned, 3).occluded_scores(
        None, fill, class_scores([0, 3], "logits"), windows=subset
    )
    np.testing.assert_allclose(part, runs[0][:, subset], atol=1e-6)
    np.testing.assert_allclose(
        incremental.Incremental(planned, 4).occluded_scores(None, fill, class_scores([0, 3], "logits"))[0],
        runs[0],
        atol=1e-6,
    )


def test_progress_reports_every_batch():
    image = random_image(3, 24, 30)
    calls = []
    occlens.explain(
        Zoo(), image, patch=6, stride=6, engine="incremental", batch_size=7, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(7, 20), (14, 20), (20, 20)]


# ---------------------------------------------------------------------------------------------
# region geometry against brute force


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 3),
    pads=st.tuples(st.integers(0, 12), st.integers(0, 12)),
    start=st.integers(0, 39),
    size=st.integers(1, 20),
)
def test_through_holds_every_changed_output_and_reads_what_they_read(
    length, kernel, stride, dilation, pads, start, size
):
    span = (kernel - 1) * dilation
    before, after = min(pads[0], span), min(pads[1], span)
    if length + before + after < span + 1:
        return
    out_length = (length + before + after - span - 1) // stride + 1
    size = min(size, length)
    start = min(start, length - size)
    box = Box(length, 1, size, 1, np.array([start]), np.array([0]))
    r = Reach(kernel, stride, dilation, before)
    via = through(box, r, Reach(1, 1), out_length, 1)
    first, count = int(via.out.tops[0]), via.out.h
    reads = {o: {o * stride - before + j * dilation for j in range(kernel)} for o in range(out_length)}
    changed = {o for o, rs in reads.items() if rs & set(range(start, start + size))}
    assert 0 <= first and first + count <= out_length
    assert changed <= set(range(first, first + count))
    read = set().union(*(reads[o] for o in range(first, first + count)))
    top = int(via.ctx_tops[0])
    assert (top, top + via.ctx_h - 1) == (min(read), max(read))  # the context spans exactly what is read
    assert top >= -before and top + via.ctx_h <= length + r.pad_after(length, out_length)


def test_union_holds_every_box_inside_the_map():
    a = Box(20, 30, 4, 5, np.array([0, 16, 7]), np.array([25, 0, 3]))
    b = Box(20, 30, 6, 2, np.array([3, 14, 2]), np.array([20, 1, 10]))
    u = union([a, b])
    for box in (a, b):
        assert np.all(u.tops <= box.tops) and np.all(u.tops + u.h >= box.tops + box.h)
        assert np.all(u.lefts <= box.lefts) and np.all(u.lefts + u.w >= box.lefts + box.w)
    assert np.all(u.tops >= 0) and np.all(u.tops + u.h <= 20) and np.all(u.lefts + u.w <= 30)


# ---------------------------------------------------------------------------------------------
# fallbacks, auto, and the caller's model left alone


def test_untraceable_model_falls_back_to_dense_with_a_warning():
    image = random_image(3, 12, 17)
    model = Untraceable()
    with pytest.warns(UserWarning, match="torch.fx cannot trace"):
        inc = occlens.explain(model, image, patch=4, engine="incremental")
    dense = occlens.explain(model, image, patch=4)
    assert inc.engine == "dense"
    np.testing.assert_array_equal(inc.delta, dense.delta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert occlens.explain(model, image, patch=4, engine="auto").engine == "dense"


def test_in_place_op_on_a_shared_tensor_is_refused():
    image = random_image(3, 16, 18)
    model = SharedInPlace().eval()
    with pytest.raises(incremental.Unsupported, match="in-place"):
        incremental.build(model, image, Grid.build(16, 18, 4, 4))
    with pytest.warns(UserWarning, match="in-place"):
        inc = occlens.explain(model, image, patch=4, engine="incremental")
    assert inc.engine == "dense"


def test_failure_inside_the_incremental_engine_falls_back_to_dense():
    image = random_image(3, 12, 17)
    with pytest.warns(UserWarning, match="incremental engine failed"), pytest.raises(occlens.ModelError):
        occlens.explain(OneAtATime(), image, patch=4, engine="incremental")
    assert occlens.explain(OneAtATime(), image, patch=4, engine="incremental", batch_size=1).engine == "incremental"


def test_device_of_a_feature_map_is_real():
    image = random_image(3, 14, 15)
    inc, dense = both(DeviceQuery(), image, 4, 3)
    assert inc.engine == "incremental" and np.abs(inc.delta - dense.delta).max() <= TOLERANCE


def test_numpy_callable_runs_dense():
    image = random_image(3, 8, 10)
    fn = lambda a: a.reshape(len(a), -1)[:, :4]  # noqa: E731
    with pytest.warns(UserWarning, match="not a torch module"):
        result = occlens.explain(fn, image, patch=4, layout="NCHW", engine="incremental")
    assert result.engine == "dense"


def test_precision_and_compile_need_the_dense_engine(native_cpu_precision):
    image = random_image(3, 12, 17)
    with pytest.raises(occlens.ConfigError, match="incremental"):
        occlens.explain(TinyConvNet(), image, patch=4, engine="incremental", precision="bf16")
    assert occlens.explain(TinyConvNet(), image, patch=4, engine="auto", precision="bf16").engine == "dense"
    with pytest.raises(occlens.ConfigError, match="engine"):
        occlens.explain(TinyConvNet(), image, patch=4, engine="sparse")


@pytest.mark.slow
def test_auto_picks_incremental_only_where_the_cost_model_predicts_a_win():
    big = random_image(3, 224, 224, seed=4)
    vgg = torchvision_model("vgg16", big)
    with torch.inference_mode():
        scores = vgg(big[None])
    chosen = choice.select("auto", vgg, big, Grid.build(224, 224, 16, 8), scores, 32, False)
    assert chosen.name == "incremental" and chosen.cost.mac_saving > 4
    assert chosen.batch_size >= 16  # the 400 MB of classifier weights are constants, not memory per window
    small = random_image(3, 12, 17)
    result = occlens.explain(TinyConvNet(), small, patch=(4, 5), stride=(3, 2), engine="auto")
    assert result.engine == "dense"  # a 12 x 17 image: gathers and launches cost more than they save


def test_caller_model_untouched():
    image = random_image(3, 40, 52, seed=6)
    model = Zoo().train()
    model.bn.eval()  # a mix of modes, restored exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    params = [id(p) for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        result = occlens.explain(model, image, patch=8, stride=6, engine="incremental")
    assert result.engine == "incremental"
    assert [m.training for m in model.modules()] == modes
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_engine_is_recorded_and_saved(tmp_path):
    image = random_image(3, 24, 30)
    result = occlens.explain(Zoo(), image, patch=6, engine="incremental")
    assert result.settings.engine == "incremental" and not result.settings.fast
    result.save(tmp_path / "r")
    loaded = occlens.OcclusionResult.load(tmp_path / "r")
    assert loaded.engine == "incremental" and loaded.settings == result.settings
    old = result.settings.to_dict()
    del old["engine"], old["fast"]  # a file written before these settings existed
    assert occlens.Settings.from_dict(old).engine == "dense"


# ---------------------------------------------------------------------------------------------
# planned once: the geometry is kept per model state and shape, the gather indices per part


class Calls(nn.Module):
    """TinyConvNet counting the calls of its own forward."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = TinyConvNet(), 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_a_second_image_reuses_the_plan_and_stays_exact():
    model, grid = Zoo(), Grid.build(24, 30, 6, 4)
    first, second = random_image(3, 24, 30, seed=1), random_image(3, 24, 30, seed=2)
    plans = []
    for image in (first, second):
        with torch.inference_mode():
            reference = model(image[None])
        plan = incremental.build(model, image, grid, reference)
        plans.append(plan)
        fill = baseline(image, "gray")
        got, _ = incremental.Incremental(plan, 64).occluded_scores(None, fill, class_scores([0, 3], "logits"))
        forward = make_forward(model, torch.device("cpu"), True, "fp32", False)
        want, _ = Dense(forward, grid, 64).occluded_scores(image, fill, class_scores([0, 3], "logits"))
        assert np.abs(got - want).max() < TOLERANCE
    assert plans[1].parts is plans[0].parts  # the same geometry: planned once
    assert plans[1].clean is not plans[0].clean  # ... with the second image's own clean pass
    assert all(part.kept for part in plans[0].parts)  # gather indices made by the first run, kept
    other = incremental.build(model, first, Grid.build(24, 30, 6, 6))
    assert other.parts is not plans[0].parts  # another grid: another plan


@pytest.mark.parametrize("change", ["in place", "load_state_dict", "new module"])
def test_a_changed_model_is_planned_again(change):
    """A kept plan holds batch norms folded from the weights it saw: changed weights must not meet it."""
    image = random_image(3, 24, 30, seed=3)
    model = spread_logits(Zoo(), image)
    before = occlens.explain(model, image, patch=6, stride=4, engine="incremental")
    with torch.no_grad():
        if change == "in place":
            model.bn.running_mean.add_(1.0)
        elif change == "load_state_dict":
            state = model.state_dict()
            state["bn.running_var"] = state["bn.running_var"] * 3
            model.load_state_dict(state)
        else:
            model.bn = nn.BatchNorm2d(model.bn.num_features).eval()
            model.bn.running_mean.fill_(0.3)
    inc, dense = both(model, image, 6, 4)
    assert inc.engine == "incremental"
    assert np.abs(inc.delta - dense.delta).max() < TOLERANCE
    assert np.abs(inc.delta - before.delta).max() > 0.1 * np.abs(before.delta).max()  # the change mattered


def test_plans_go_with_their_model():
    model, image = Zoo(), random_image(3, 24, 30, seed=5)
    occlens.explain(model, image, patch=6, engine="incremental")
    mine = id(model)
    assert any(key[0][0] == mine for key in incremental._layouts)
    del model
    import gc

    gc.collect()
    assert not any(key[0][0] == mine for key in incremental._layouts)
    assert len(incremental._layouts) <= incremental.PLANS


def test_a_whole_part_batch_issues_few_ops_per_step():
    """Kept gather indices: a batch runs the model's own ops plus a copy and a gather (and their views) per
    gathered input, not the index arithmetic of every gather: 694 ops here, 3,065 before (25 per step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    model, image = Zoo(), random_image(3, 40, 52, seed=6)
    grid = Grid.build(40, 52, 8, 4)
    plan = incremental.build(model, image, grid)
    fill = baseline(image, "gray")
    incremental.Incremental(plan, 512).occluded_scores(None, fill, class_scores([0], "logits"))  # makes the indices
    with Count():
        incremental.Incremental(plan, 512).occluded_scores(None, fill, class_scores([0], "logits"))
    steps = sum(len(part.steps) for part in plan.parts)
    assert Count.ops <= 8 * steps, (Count.ops, steps)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_auto_is_the_default_and_costs_no_forward_pass_of_its_own():
    model, image = Calls(), random_image(3, 12, 17)
    result = occlens.explain(model, image, patch=4, batch_size=5)
    assert result.settings.engine == "auto" and result.engine == "dense"  # too little work to plan
    batches = -(-result.grid.size // 5)
    assert model.calls == 1 + batches  # the clean pass (MACs counted on it) and the occluded batches
    assert not any(key[0][0] == id(model) for key in incremental._layouts)  # decided before any tracing
    big = random_image(3, 224, 224, seed=4)
    vgg = torchvision_model("vgg11", big)
    auto, dense = occlens.explain(vgg, big, patch=32, stride=32), occlens.explain(vgg, big, patch=32, engine="dense")
    assert auto.engine == "incremental"
    assert np.abs(auto.delta - dense.delta).max() < TOLERANCE
