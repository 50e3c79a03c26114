"""Every user-facing error path: the exception type, and a one-line message that names the bad value."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, assert_one_line_naming, random_image

import occlens
from occlens import ConfigError, ImageError, ModelError, OcclensError

NET = TinyConvNet(classes=5)
IMG = random_image()  # 3 x 12 x 17
HWC = IMG.permute(1, 2, 0).numpy().copy()


def explain(image=IMG, model=NET, label=None, **kw):
    kw.setdefault("patch", 4)
    return occlens.explain(model, image, label, **kw)


def with_value(a: np.ndarray, index, value) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


# ---------------------------------------------------------------------------------------------
# settings


CONFIG_CASES = {
    "patch-taller-than-image": (lambda: explain(patch=13), [13, 12, 17]),
    "patch-wider-than-image": (lambda: explain(patch=(4, 18)), [18, 17]),
    "patch-zero": (lambda: explain(patch=0), [0]),
    "patch-negative": (lambda: explain(patch=(-2, 4)), [-2]),
    "patch-float": (lambda: explain(patch=2.5), [2.5]),
    "patch-string": (lambda: explain(patch="4"), ["'4'"]),
    "patch-one-tuple": (lambda: explain(patch=(4,)), ["(4,)"]),
    "patch-triple": (lambda: explain(patch=(4, 4, 4)), ["(4, 4, 4)"]),
    "patch-bool": (lambda: explain(patch=True), ["True"]),
    "patch-float-in-pair": (lambda: explain(patch=(4, 2.0)), ["2.0"]),
    "patch-half-none": (lambda: explain(patch=(16, None)), ["None"]),
    "stride-zero": (lambda: explain(stride=0), [0]),
    "stride-negative": (lambda: explain(stride=-2), [-2]),
    "stride-negative-width": (lambda: explain(stride=(2, -1)), [-1]),
    "stride-larger-than-patch": (lambda: explain(patch=4, stride=(2, 5)), [5, 4]),
    "stride-larger-than-patch-height": (lambda: explain(patch=(3, 6), stride=(4, 6)), [4, 3]),
    "stride-string": (lambda: explain(stride="2"), ["'2'"]),
    "stride-float": (lambda: explain(stride=1.5), [1.5]),
    "label-too-big": (lambda: explain(label=5), [5]),
    "label-negative": (lambda: explain(label=-1), [-1]),
    "label-float": (lambda: explain(label=2.0), [2.0]),
    "label-string": (lambda: explain(label="3"), ["'3'"]),
    "label-bool": (lambda: explain(label=True), ["True"]),
    "target-too-big": (lambda: explain(target=7), [7]),
    "target-negative": (lambda: explain(target=-3), [-3]),
    "target-float": (lambda: explain(target=1.5), [1.5]),
    "output-unknown": (lambda: explain(output="logit"), ["'logit'"]),
    "output-probabilities": (lambda: explain(output="probabilities"), ["probabilities"]),
    "fill-unknown-name": (lambda: explain(fill="sparkle"), ["sparkle"]),
    "fill-above-one": (lambda: explain(fill=1.5), [1.5]),
    "fill-negative": (lambda: explain(fill=-0.25), [-0.25]),
    "fill-nan": (lambda: explain(fill=float("nan")), ["nan"]),
    "fill-255": (lambda: explain(fill=128), [128]),
    "fill-bad-channel-value": (lambda: explain(fill=(0.2, 1.5, 0.3)), [1.5]),
    "fill-too-few-channels": (lambda: explain(fill=(0.1, 0.2)), [0.1, 0.2, 3]),
    "fill-too-many-channels": (lambda: explain(fill=(0.1, 0.2, 0.3, 0.4)), [0.4, 3]),
    "fill-wrong-type": (lambda: explain(fill=None), ["None"]),
    "batch-size-zero": (lambda: explain(batch_size=0), [0]),
    "batch-size-negative": (lambda: explain(batch_size=-2), [-2]),
    "batch-size-bool": (lambda: explain(batch_size=True), ["True"]),
    "batch-size-float": (lambda: explain(batch_size=2.5), [2.5]),
    "seed-string": (lambda: explain(seed="a"), ["'a'"]),
    "device-other-than-model": (lambda: explain(device="meta"), ["meta", "cpu"]),
    "device-cuda": (lambda: explain(device="cuda"), ["cuda"]),
    "device-unknown": (lambda: explain(device="gpu7"), ["gpu7"]),
    "model-not-callable": (lambda: explain(model=42), ["int"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_config_errors(case):
    call, values = case
    with pytest.raises(ConfigError) as info:
        call()
    assert_one_line_naming(info.value, *values)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_plain_callable_on_missing_cuda_is_config_error():
    """A plain callable has no device of its own; asking for an absent CUDA device is still a user error."""
    with pytest.raises(ConfigError) as info:
        explain(model=lambda z: NET(z), device="cuda")
    assert_one_line_naming(info.value, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_cuda_for_cpu_model_is_config_error_and_model_stays():
    model = TinyConvNet()
    with pytest.raises(ConfigError) as info:
        explain(model=model, device="cuda")
    assert_one_line_naming(info.value, "cuda", "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# images


IMAGE_CASES = {
    "nan-numpy": (lambda: explain(with_value(HWC, (3, 4, 1), np.nan)), ["NaN"]),
    "inf-tensor": (lambda: explain(torch.from_numpy(with_value(IMG.numpy(), (0, 2, 2), np.inf))), ["inf"]),
    "float-above-one": (lambda: explain(with_value(HWC, (0, 0, 0), 1.5)), [1.5]),
    "float-below-zero": (lambda: explain(with_value(HWC, (5, 5, 2), -0.25)), [-0.25]),
    "float-0-255": (lambda: explain((HWC * 255).round()), [255]),
    "tensor-above-one": (lambda: explain(IMG * 2 + 0.01), ["2.0"]),
    "numpy-1d": (lambda: explain(np.zeros(17, np.float32)), ["(17,)"]),
    "numpy-4d": (lambda: explain(HWC[None]), ["(1, 12, 17, 3)"]),
    "tensor-batch-of-two": (lambda: explain(torch.stack([IMG, IMG])), ["(2, 3, 12, 17)"]),
    "tensor-1d": (lambda: explain(torch.zeros(17)), ["(17,)"]),
    "tensor-5d": (lambda: explain(IMG[None, None]), ["(1, 1, 3, 12, 17)"]),
    "numpy-channels-first": (lambda: explain(IMG.numpy()), ["(3, 12, 17)"]),
    "tensor-channels-last": (lambda: explain(torch.from_numpy(HWC)), ["(12, 17, 3)"]),
    "numpy-int32": (lambda: explain((HWC * 255).astype(np.int32)), ["int32"]),
    "numpy-bool": (lambda: explain(HWC > 0.5), ["bool"]),
    "tensor-int64": (lambda: explain((IMG * 255).long()), ["int64"]),
    "not-an-image": (lambda: explain([[0.5] * 17] * 12), ["list"]),
    "grayscale-to-rgb-conv": (lambda: explain(HWC[:, :, 0]), [1, 3]),
    "four-channels-to-rgb-conv": (lambda: explain(np.concatenate([HWC, HWC[:, :, :1]], axis=2)), [4, 3]),
    "empty": (lambda: explain(np.zeros((0, 17, 3), np.float32)), ["(3, 0, 17)"]),
}


@pytest.mark.parametrize("case", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_image_errors(case):
    call, values = case
    with pytest.raises(ImageError) as info:
        call()
    assert_one_line_naming(info.value, *values)


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "text"])
def test_unreadable_paths(tmp_path, kind):
    path = tmp_path / "picture.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a png\n")
    with pytest.raises(ImageError) as info:
        explain(path)
    assert_one_line_naming(info.value, str(path))


# ---------------------------------------------------------------------------------------------
# models


def nan_where_pixel_is_gray(value=float("nan")):
    """NaN scores for the occluded copies whose window covers pixel (6, 9); fine elsewhere."""

    def f(z):
        out = NET(z).clone()
        out[z[:, 0, 6, 9] == 0.5] = value
        return out

    return f


def raises_on_batches():
    def f(z):
        if z.shape[0] > 1:
            raise ValueError("batch too large for this toy\nsecond line of the traceback text")
        return NET(z)

    return f


MODEL_CASES = {
    "one-d-scores": (lambda: explain(model=lambda z: NET(z)[:, 0]), ["(1,)"]),
    "three-d-scores": (lambda: explain(model=lambda z: NET(z)[:, None]), ["(1, 1, 5)"]),
    "wrong-batch": (lambda: explain(model=lambda z: NET(z[:1]), batch_size=4), ["(1, 5)", 4]),
    "no-class": (lambda: explain(model=lambda z: NET(z)[:, :0]), ["0 columns"]),
    "integer-scores": (lambda: explain(model=lambda z: NET(z).round().long()), ["int64"]),
    "returns-a-string": (lambda: explain(model=lambda z: "cat"), ["str"]),
    "nan-on-clean-image": (lambda: explain(model=lambda z: NET(z) * float("nan")), ["NaN"]),
    "inf-on-clean-image": (lambda: explain(model=lambda z: NET(z) + float("inf")), ["infinite"]),
    "nan-on-one-window": (lambda: explain(model=nan_where_pixel_is_gray(), batch_size=1), ["NaN", "window", 7]),
    "nan-on-one-batch": (lambda: explain(model=nan_where_pixel_is_gray(), batch_size=3), ["NaN", "window(s) [7]"]),
    "inf-on-one-window": (
        lambda: explain(model=nan_where_pixel_is_gray(float("-inf")), batch_size=2),
        ["infinite", "window(s) [7]"],
    ),
    "raises-on-clean-image": (
        lambda: explain(model=lambda z: torch.zeros(2, 3) @ torch.zeros(4, 5)),
        ["RuntimeError", "mat1 and mat2"],
    ),
    "raises-on-occluded-batches": (
        lambda: explain(model=raises_on_batches(), batch_size=5),
        ["ValueError", "batch too large for this toy", "window", 0, 4],
    ),
    "probs-that-are-logits": (lambda: explain(output="probs"), ["probs", "logits"]),
    "probs-negative": (lambda: explain(model=lambda z: torch.tensor([[-0.5, 1.5]]), output="probs"), ["probs", -0.5]),
    "log-probs-that-are-logits": (lambda: explain(output="log_probs"), ["log_probs"]),
    "log-probs-that-are-probs": (
        lambda: explain(model=lambda z: torch.softmax(NET(z), dim=1), output="log_probs"),
        ["log_probs"],
    ),
}


@pytest.mark.parametrize("case", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_model_errors(case):
    call, values = case
    with pytest.raises(ModelError) as info:
        call()
    assert_one_line_naming(info.value, *values)


def test_model_error_keeps_the_original_exception():
    with pytest.raises(ModelError) as info:
        explain(model=raises_on_batches(), batch_size=5)
    assert isinstance(info.value.__cause__, ValueError)


def test_nan_window_names_the_window_that_failed():
    """The NaN model breaks only window 7 (the one covering pixel (6, 9)); the others are fine."""
    with pytest.raises(ModelError) as info:
        explain(model=nan_where_pixel_is_gray(), batch_size=1)
    message = str(info.value)
    assert "7" in message and not any(f"windows {i}.." in message for i in range(7))


# ---------------------------------------------------------------------------------------------
# warnings and the hierarchy


def test_logits_that_look_like_probabilities_warn():
    softmaxed = lambda z: torch.softmax(NET(z), dim=1)  # noqa: E731
    with pytest.warns(UserWarning, match="probs") as record:
        explain(model=softmaxed)
    assert any(w.filename == __file__ for w in record)  # points at the caller, not into occlens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(model=softmaxed, output="probs")
        explain(model=NET)


@pytest.mark.parametrize(
    ("cls", "builtin"), [(ConfigError, ValueError), (ImageError, ValueError), (ModelError, RuntimeError)]
)
def test_hierarchy(cls, builtin):
    assert issubclass(cls, OcclensError) and issubclass(cls, builtin)
    assert issubclass(OcclensError, Exception)
    assert getattr(occlens, cls.__name__) is cls
