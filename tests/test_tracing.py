"""Tracing and batch-norm folding: the folded default model computes what the unfolded one does,
folding in place leaves alone what it cannot fold, and hooks the trace would skip stop it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from conftest import TinyConvNet, random_image
from PIL import Image
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

import occlens
from occlens.core.samples import sample
from occlens.graph.tracing import Unsupported, fold_in_place, trace
from occlens.models import load_default_model
from occlens.models.default import PREPROCESS, by_order, weights_path


def _spread_norm(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    """Running statistics and affine parameters far from the identity, so that dropping a norm shows."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) * 2.7 + 0.3)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return bn


class Mixed(nn.Module):
    """Pairs that fold (plain, affine-free, timm's norm + activation) and pairs that must not: a
    convolution run twice, and a convolution whose output also feeds a residual add."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.a, self.bn_a = nn.Conv2d(3, 6, 3, padding=1), _spread_norm(nn.BatchNorm2d(6), 1)
            self.b, self.bn_b = (
                nn.Conv2d(6, 6, 3, padding=1, bias=False),
                _spread_norm(nn.BatchNorm2d(6, affine=False), 2),
            )
            self.c, self.bn_c = nn.Conv2d(6, 6, 1), _spread_norm(BatchNormAct2d(6, act_layer=nn.ReLU6), 3)
            self.twice, self.bn_twice = nn.Conv2d(6, 6, 3, padding=1), _spread_norm(nn.BatchNorm2d(6), 4)
            self.d, self.bn_d = nn.Conv2d(6, 6, 3, padding=1), _spread_norm(nn.BatchNorm2d(6), 5)
            self.head = nn.Linear(24, 5)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = self.bn_c(self.c(self.bn_b(self.b(x))))
        x = self.bn_twice(self.twice(x)) + self.twice(x)  # the convolution runs twice
        z = self.d(x)
        x = self.bn_d(z) + z  # d's output feeds the add as well
        return self.head(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def test_fold_in_place_folds_what_runs_once_and_keeps_the_outputs():
    model = Mixed()
    original = copy.deepcopy(model)
    assert fold_in_place(model) == 3
    assert isinstance(model.bn_a, nn.Identity) and isinstance(model.bn_b, nn.Identity)
    assert isinstance(model.bn_c, nn.ReLU6)  # the norm's activation stays
    assert isinstance(model.bn_twice, nn.BatchNorm2d) and isinstance(model.bn_d, nn.BatchNorm2d)
    assert model.twice is not None and torch.equal(model.twice.weight, original.twice.weight)
    assert not torch.equal(model.a.weight, original.a.weight)
    x = torch.rand(4, 3, 11, 13)
    with torch.inference_mode():
        want, got = original(x), model(x)
    assert float((want - original.head.bias.detach()).abs().max()) > 0.1  # the norms matter to the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fold_in_place_leaves_an_untraceable_model_alone():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), _spread_norm(nn.BatchNorm2d(4), 6)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.mean() > 0 else x

    model = Branchy().eval()
    assert fold_in_place(model) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_default_model_is_folded_and_scores_as_the_unfolded_network():
    loaded = load_default_model()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.module.modules())
    unfolded = load_default_model(fold=False).module
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unfolded.modules()) == 49
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(by_order(state, net.state_dict()))
    for (k, a), b in zip(unfolded.model.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # fold=False is the network exactly as converted
    photo = PREPROCESS(Image.open(sample("coffee").path))[None]
    with torch.inference_mode():
        want, got = unfolded(photo), loaded.module(photo)
    assert int(want.argmax()) == int(got.argmax())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_a_hook_on_a_module_the_trace_inlines_stops_tracing():
    model = TinyConvNet()
    calls = []
    model.body.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(Unsupported, match="body has a forward hook"):
        trace(model)
    image = random_image()
    with pytest.warns(UserWarning, match="forward hook"):
        result = occlens.explain(model, image, patch=4, engine="incremental")
    assert result.engine == "dense"
    assert len(calls) >= 1 + result.grid.size // result.batch_size  # the hook ran on every batch


def test_a_hook_on_a_leaf_module_runs_in_the_incremental_engine():
    model = TinyConvNet()
    calls = []
    model.body[2].register_forward_hook(lambda *_: calls.append(1))
    trace(model)  # a leaf is called as itself: its hook runs
    image = random_image(3, 24, 30)
    inc = occlens.explain(model, image, patch=6, stride=4, engine="incremental")
    dense = occlens.explain(model, image, patch=6, stride=4)
    assert inc.engine == "incremental" and calls
    np.testing.assert_allclose(inc.delta, dense.delta, atol=1e-5)
