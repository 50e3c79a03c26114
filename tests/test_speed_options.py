"""The dense engine's speed options: reduced precision, torch.compile, channels-last, OOM back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import occlens
from occlens.core.errors import ConfigError, ModelError
from occlens.models.forward import padded_batches


def conv_model() -> torch.nn.Module:
    """A small CNN that pools to a 3 x 3 grid, so where a window falls matters."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(72, 5),
    ).eval()
    with torch.no_grad():
        model[-1].weight.mul_(30)  # confident enough that windows move the loss above bf16's rounding
    return model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).random((28, 36, 3)).astype(np.float32)


def rank(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a.ravel())).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_bf16_map_is_close_to_the_exact_one_and_recorded(image, tmp_path, native_cpu_precision):
    model = conv_model()
    exact = occlens.explain(model, image, patch=4)
    fast = occlens.explain(model, image, patch=4, precision="bf16")
    assert fast.settings.precision == "bf16" and exact.settings.precision == "fp32"
    assert fast.predicted == exact.predicted
    assert spearman(fast.delta, exact.delta) > 0.9
    fast.save(tmp_path / "r")
    assert occlens.OcclusionResult.load(tmp_path / "r").settings.precision == "bf16"


def test_compile_gives_the_exact_map(image):
    model = conv_model()
    exact = occlens.explain(model, image, patch=(6, 8), stride=(3, 5), batch_size=7)
    compiled = occlens.explain(model, image, patch=(6, 8), stride=(3, 5), batch_size=7, compile=True)
    assert compiled.settings.compile
    assert np.abs(compiled.delta - exact.delta).max() < 1e-5


def test_compiled_model_sees_one_batch_shape_and_short_batches_come_back_unpadded():
    seen = []

    def compiled(batch):  # stands in for torch.compile's output: records the shapes it is given
        seen.append(tuple(batch.shape))
        return batch.flatten(1).sum(1, keepdim=True) * torch.arange(1, 3)

    run = padded_batches(compiled)
    batches = [torch.rand(7, 3, 4, 5), torch.rand(7, 3, 4, 5), torch.rand(3, 3, 4, 5)]
    outs = [run(b) for b in batches]
    assert seen == [(7, 3, 4, 5)] * 3
    for b, out in zip(batches, outs, strict=True):
        assert torch.equal(out, b.flatten(1).sum(1, keepdim=True) * torch.arange(1, 3))
    tupled = padded_batches(lambda b: (b.sum((1, 2, 3)),))  # not a tensor: run again unpadded
    tupled(torch.rand(4, 3, 2, 2))
    assert tupled(torch.rand(2, 3, 2, 2))[0].shape == (2,)


def test_channels_last_input_leaves_the_model_as_it_was(image):
    model = conv_model()
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    occlens.explain(model, image, patch=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k


def test_batch_is_halved_on_cuda_out_of_memory(image):
    model = conv_model()
    sizes = []

    def tight(batch):  # a model on a device that holds at most 3 images at once
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated by the model)")
        return model(batch)

    result = occlens.explain(tight, image, patch=4, batch_size=16)
    reference = occlens.explain(model, image, patch=4)
    assert result.batch_size == 2 and sizes[1:4] == [16, 8, 4]
    assert np.abs(result.delta - reference.delta).max() < 1e-6


def test_out_of_memory_at_one_image_is_a_model_error(image):
    def hopeless(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ModelError, match="out of memory"):
        occlens.explain(hopeless, image, patch=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
        ({"compile": "yes"}, "compile must be True or False"),
    ],
)
def test_bad_speed_options(image, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        occlens.explain(conv_model(), image, patch=4, **kwargs)


def test_reduced_precision_needs_a_torch_model(image):
    with pytest.raises(ConfigError, match="apply to torch modules"):
        occlens.explain(lambda a: a.mean(axis=(2, 3)), image, patch=4, layout="NCHW", precision="bf16")
