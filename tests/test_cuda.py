"""On a CUDA device: the same maps as on the CPU, from every engine and precision (skipped without CUDA).

TF32 is switched off so that fp32 on the GPU is comparable to the CPU at the exactness tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import random_image
from test_incremental import spread_logits

import occlens
from occlens.models import Normalized, load_default_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TOLERANCE = 1e-4
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def model_pair(name: str, image: torch.Tensor):
    """(CPU model, an independent CUDA copy of it): occlens must not move the user's model."""
    if name == "efficientnet-lite0":
        return load_default_model("cpu").module, load_default_model("cuda").module
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, weights=None)
    cpu = spread_logits(Normalized(net, *IMAGENET).eval(), image)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, weights=None)
    gpu = Normalized(net, *IMAGENET).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "mobilenet_v2", "efficientnet-lite0"])
def test_dense_and_incremental_on_cuda_match_the_cpu(name):
    image = random_image(3, 96, 112, seed=4)
    cpu, gpu = model_pair(name, image)
    want = occlens.explain(cpu, image, patch=16, stride=(8, 12), engine="dense")
    for engine in ("dense", "incremental"):
        got = occlens.explain(gpu, image, patch=16, stride=(8, 12), engine=engine)
        assert got.engine == engine
        assert got.predicted == want.predicted
        assert np.abs(got.delta - want.delta).max() <= TOLERANCE, engine
    assert next(gpu.parameters()).device.type == "cuda" and next(cpu.parameters()).device.type == "cpu"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cuda_ranks_like_fp32(precision):
    image = random_image(3, 96, 96, seed=5)
    _, gpu = model_pair("resnet18", image)
    exact = occlens.explain(gpu, image, patch=16, stride=8)
    fast = occlens.explain(gpu, image, patch=16, stride=8, precision=precision)
    assert fast.settings.precision == precision and fast.predicted == exact.predicted
    a, b = exact.delta.ravel(), fast.delta.ravel()
    rho = np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
    assert rho > 0.9


def test_auto_and_fast_run_on_cuda_and_say_what_ran():
    image = random_image(3, 128, 128, seed=6)
    cpu, gpu = model_pair("vgg16", image)
    auto = occlens.explain(gpu, image, patch=16, stride=8, engine="auto")
    assert auto.engine in ("dense", "incremental")
    fast = occlens.explain(gpu, image, patch=16, stride=8, fast=True)
    want = occlens.explain(cpu, image, patch=16, stride=8, fast=True)
    assert fast.settings.fast and np.abs(fast.delta - want.delta).max() <= TOLERANCE


def test_image_on_cuda_and_model_on_cuda_give_the_cpu_map():
    image = random_image(3, 64, 64, seed=7)
    cpu, gpu = model_pair("resnet18", image)
    want = occlens.explain(cpu, image, patch=8, stride=8)
    got = occlens.explain(gpu, image.cuda(), patch=8, stride=8)
    assert np.abs(got.delta - want.delta).max() <= TOLERANCE


def test_auto_on_cuda_skips_planning_for_small_runs_and_plans_for_large_ones():
    from occlens.core.grid import Grid
    from occlens.engines.choice import select

    _, gpu = model_pair("vgg16", random_image(3, 64, 64, seed=8))
    for size, stride, planned in ((64, 16, False), (224, 8, True)):
        x = random_image(3, size, size, seed=8).cuda()
        with torch.inference_mode():
            scores = gpu(x[None])
        chosen = select("auto", gpu, x, Grid.build(size, size, 16, stride), scores, 256, False)
        assert ("too little work" not in chosen.reason) == planned, chosen.reason
    assert chosen.name == "incremental"


@pytest.mark.parametrize(
    "name, size, stride, engine",
    [
        ("resnet18", 96, 8, "dense"),  # too little work: auto does not plan on CUDA
        ("vgg16", 224, 8, "incremental"),  # 729 windows, 1.1e13 MACs: auto plans, the cost model picks incremental
    ],
)
def test_auto_and_incremental_on_cuda_give_the_cpu_dense_map(name, size, stride, engine):
    """What auto picks on CUDA, and the incremental engine there, compute the CPU dense engine's map."""
    image = random_image(3, size, size, seed=9)
    cpu, gpu = model_pair(name, image)
    want = occlens.explain(cpu, image, patch=16, stride=stride, engine="dense")
    scale = max(1.0, float(np.abs(want.delta).max()))
    auto = occlens.explain(gpu, image, patch=16, stride=stride, engine="auto")
    assert auto.engine == engine
    incremental = occlens.explain(gpu, image, patch=16, stride=stride, engine="incremental")
    assert incremental.engine == "incremental"
    for got in (auto, incremental):
        assert got.predicted == want.predicted and got.device.startswith("cuda")
        assert np.abs(got.delta - want.delta).max() <= TOLERANCE * scale, got.engine
