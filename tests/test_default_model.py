"""The default model (EfficientNet-Lite0), its preprocessing, ImageNet labels and the sample photos."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from occlens.core.errors import ConfigError, ImageError, ModelError
from occlens.core.samples import Sample, sample, samples
from occlens.models import LoadedModel, Normalized, Preprocess, imagenet_labels, load_default_model, preprocess
from occlens.models.default import PREPROCESS, by_order, weights_path

# Top-1 of the default model on each sample (class, probability), measured with PREPROCESS.
EXPECTED_TOP1 = {
    "chelsea": (282, 0.3861),  # "tiger cat": wrong, the true class is 281 "tabby" (p = 0.18, third)
    "coffee": (967, 0.9541),  # "espresso": right
    "camera": (872, 0.9387),  # "tripod": right
}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_default_model()


def _photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


# -- the model ----------------------------------------------------------------------------------


def test_weights_line_up_with_timm_by_position():
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = by_order(state, ours)
    assert list(mapped) == list(ours)
    assert len(mapped) == 296
    assert sum(not k.endswith("num_batches_tracked") for k in mapped) == 247
    assert all(mapped[k].shape == ours[k].shape for k in ours)
    assert list(state)[0] == "_conv_stem.weight" and torch.equal(mapped["conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.bias"], state["_fc.bias"])


def test_by_order_refuses_weights_that_do_not_fit():
    ours = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(ModelError, match="has 1 tensors but the model has 2"):
        by_order({"x.weight": torch.zeros(2, 3)}, ours)
    with pytest.raises(ModelError, match=r"x.weight \(3, 2\) vs a.weight \(2, 3\)"):
        by_order({"x.weight": torch.zeros(3, 2), "x.bias": torch.zeros(2)}, ours)
    with pytest.raises(ModelError, match="x.bias"):
        by_order({"x.bias": torch.zeros(2, 3), "x.weight": torch.zeros(2)}, ours)


def test_loaded_model_is_ready_and_frozen(loaded):
    assert loaded.name == "efficientnet-lite0"
    assert loaded.output == "logits"
    assert loaded.preprocess == PREPROCESS
    assert loaded.labels is imagenet_labels()
    assert isinstance(loaded.module, Normalized)
    assert not any(m.training for m in loaded.module.modules())
    assert not any(p.requires_grad for p in loaded.module.parameters())
    assert next(loaded.module.parameters()).device.type == "cpu"


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_top1_on_each_sample_is_pinned(loaded, name):
    s = sample(name)
    x = loaded.preprocess(Image.open(s.path))
    with torch.no_grad():
        probs = loaded.module(x[None]).softmax(dim=1)[0]
    index, prob = EXPECTED_TOP1[name]
    assert int(probs.argmax()) == index
    assert float(probs[index]) == pytest.approx(prob, abs=0.01)


def test_samples_hold_a_right_and_a_wrong_prediction():
    right = {s.name for s in samples() if EXPECTED_TOP1[s.name][0] == s.label}
    assert right == {"coffee", "camera"}
    assert sample("chelsea").label == 281 and EXPECTED_TOP1["chelsea"][0] == 282


def test_bad_device_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown device"):
        load_default_model("gpu0")


# -- labels -------------------------------------------------------------------------------------


def test_imagenet_labels():
    labels = imagenet_labels()
    assert isinstance(labels, tuple) and len(labels) == 1000
    assert (labels[0], labels[281], labels[282], labels[967], labels[872]) == (
        "tench",
        "tabby",
        "tiger cat",
        "espresso",
        "tripod",
    )


# -- preprocessing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(451, 300), (300, 451), (224, 224), (1000, 257)])
def test_preprocess_gives_224_pixels_in_unit_range(width, height):
    x = PREPROCESS(_photo(width, height))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_preprocess_equals_timms_eval_transform_before_normalisation():
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    for s in samples():
        image = Image.open(s.path).convert("RGB")
        ours = (PREPROCESS(image) - 0.5) / 0.5
        torch.testing.assert_close(ours, reference(image), rtol=0, atol=1e-6)


def test_preprocess_converts_grayscale_and_alpha_to_rgb():
    gray = PREPROCESS(_photo(300, 260, "L"))
    assert gray.shape == (3, 224, 224) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert PREPROCESS(_photo(300, 260, "RGBA")).shape == (3, 224, 224)


def test_preprocess_without_resize_goes_straight_to_size():
    pre = Preprocess(size=(120, 200), resize=None, interpolation="bilinear", mean=(0.5,), std=(0.25,))
    image = _photo(451, 300)
    assert pre(image).shape == (3, 120, 200)
    assert pre.crop_box(451, 300) == (0.0, 0.0, 451.0, 300.0)


def test_preprocess_rejects_non_images():
    with pytest.raises(ImageError, match="PIL image"):
        PREPROCESS(np.zeros((224, 224, 3)))


def test_crop_box_is_the_region_the_model_sees():
    assert PREPROCESS.crop_box(512, 512) == (32.0, 32.0, 480.0, 480.0)
    # 451 x 300 -> 384 x 256, crop at left 80, top 16
    box = PREPROCESS.crop_box(451, 300)
    assert box == pytest.approx((80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256))
    # cropping the box out of the photo and resizing it gives (nearly) the same pixels
    image = Image.open(sample("coffee").path).convert("RGB")
    left, top, right, bottom = PREPROCESS.crop_box(*image.size)
    direct = image.resize((224, 224), Image.Resampling.BICUBIC, box=(left, top, right, bottom))
    direct = torch.from_numpy(np.asarray(direct, dtype=np.float32) / 255).permute(2, 0, 1)
    assert float((direct - PREPROCESS(image)).abs().mean()) < 0.01


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("width", "height"), [(37, 900), (1200, 31), (640, 480)])
def test_resampling_only_the_crop_gives_the_pixels_of_resize_then_crop(interpolation, width, height):
    pre = Preprocess(size=(224, 224), resize=256, interpolation=interpolation, mean=(0.5,), std=(0.5,))
    image = Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8))
    whole, cropped = pre(image), _pixels(pre._resized_crop(image))
    assert cropped.shape == whole.shape == (3, 224, 224)
    assert float((cropped - whole).abs().max()) <= 1.5 / 255 and float((cropped != whole).float().mean()) < 0.01


def test_a_strip_too_long_to_resize_whole_is_resampled_only_where_the_crop_lies():
    strip = Image.fromarray(np.random.default_rng(3).integers(0, 256, (12, 100_000, 3), dtype=np.uint8))
    assert 256 * 256 * 100_000 / 12 > preprocess.MAX_RESIZED_PIXELS  # whole: 2.1e6 x 256 pixels, about 1.6 GB
    assert torch.equal(PREPROCESS(strip), _pixels(PREPROCESS._resized_crop(strip)))


def test_preprocess_normalises_its_fields():
    pre = Preprocess(size=[224, 224], resize=256, interpolation="bicubic", mean=[0.5, 0.5, 0.5], std=(1, 1, 1))
    assert pre.size == (224, 224) and pre.mean == (0.5, 0.5, 0.5) and pre.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": (224,)}, "size must be"),
        ({"size": (0, 224)}, "size must be"),
        ({"size": (224.0, 224)}, "size must be"),
        ({"size": (True, 224)}, "size must be"),
        ({"resize": 200}, "resize must be"),
        ({"resize": 0}, "resize must be"),
        ({"resize": 256.0}, "resize must be"),
        ({"interpolation": "lanczos"}, "interpolation must be"),
        ({"mean": (0.5, 0.5)}, "mean must be"),
        ({"mean": "abc"}, "mean must be"),
        ({"std": (0.5, float("nan"), 0.5)}, "std must be"),
        ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
        ({"mean": (0.5,), "std": (0.5, 0.5, 0.5)}, "same length"),
    ],
)
def test_preprocess_validation(change, message):
    fields = {"size": (224, 224), "resize": 256, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(ConfigError, match=message) as err:
        Preprocess(**{**fields, **change})
    assert "\n" not in str(err.value)


# -- Normalized ---------------------------------------------------------------------------------


def test_normalized_computes_x_minus_mean_over_std_and_leaves_the_model_alone():
    inner = torch.nn.Conv2d(3, 2, 1)
    inner.train()
    before = {k: v.clone() for k, v in inner.state_dict().items()}
    wrapped = Normalized(inner, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    assert inner.training and all(torch.equal(v, before[k]) for k, v in inner.state_dict().items())
    assert wrapped.mean.shape == (1, 3, 1, 1) and wrapped.std.shape == (1, 3, 1, 1)
    assert list(wrapped.state_dict()) == ["model.weight", "model.bias"]
    x = torch.rand(2, 3, 5, 7)
    x_before = x.clone()
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), inner((x - mean) / std))
    assert torch.equal(x, x_before)


def test_normalized_rejects_bad_statistics():
    with pytest.raises(ConfigError, match="same length"):
        Normalized(torch.nn.Identity(), (0.5, 0.5, 0.5), (0.5,))
    with pytest.raises(ConfigError, match="std be positive"):
        Normalized(torch.nn.Identity(), (0.5,), (-1.0,))


# -- samples ------------------------------------------------------------------------------------


def test_samples_are_small_native_resolution_photos_with_labels():
    names = [s.name for s in samples()]
    assert names == ["chelsea", "coffee", "camera"]
    for s in samples():
        assert isinstance(s, Sample) and s.path.is_file() and s.path.suffix == ".jpg"
        assert s.path.stat().st_size <= 100_000
        with Image.open(s.path) as image:
            assert min(image.size) >= 256
        assert 0 <= s.label < 1000 and s.license == "CC0 1.0" and s.author and s.source and s.title


def test_unknown_sample_lists_the_names():
    with pytest.raises(ConfigError, match="unknown sample 'dog'; choose one of: chelsea, coffee, camera"):
        sample("dog")
