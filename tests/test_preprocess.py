"""No silent preprocessing trap, and random weights are never silent.

A plain module given a photo is explained at the photo's size with one warning; ``preprocess=`` (a preset, a
torchvision weights enum, a Preprocess) gives the model exactly the input torchvision's own transforms give;
a timm module brings its ``pretrained_cfg``, exactly timm's own eval transform; a fine-tuned head never gets
ImageNet's names or sizes by guess; ``load_model(module)`` wraps a module without changing it; an architecture
loaded by name without weights says "random weights" in a warning, the table, the JSON and the figure.

Every model is built here with random weights (nothing is downloaded): a torchvision weights enum carries its
transforms and class names without its weights.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import timm
import timm.data
import torch
import torchvision
from PIL import Image
from torchvision.models import (
    ConvNeXt_Tiny_Weights,
    EfficientNet_B0_Weights,
    ResNet18_Weights,
    ViT_B_16_Weights,
)

import occlens
from occlens.cli import main
from occlens.core.errors import ConfigError
from occlens.core.samples import samples
from occlens.core.settings import Settings
from occlens.models import LoadedModel, Normalized, Preprocess, load_model

CHELSEA = next(s for s in samples() if s.name == "chelsea").path  # a real photo, 451 x 300
FOUR = dict(patch=112, engine="dense", batch_size=4)  # 224 x 224: four windows, one occluded batch
PLAIN = "has no preprocessing of its own"  # the warning for a plain module given a photo
RANDOM = "random weights (none were given)"  # the warning for an architecture without weights

TORCHVISION = {  # a small torchvision architecture of each family and its weights enum (transforms, names)
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "efficientnet_b0": EfficientNet_B0_Weights.IMAGENET1K_V1,  # bicubic
    "convnext_tiny": ConvNeXt_Tiny_Weights.IMAGENET1K_V1,  # resize 236
    "vit_b_16": ViT_B_16_Weights.IMAGENET1K_V1,  # a fixed 224 x 224 input
}
SLOW = {"convnext_tiny", "vit_b_16"}  # 4 to 12 s each on two cores
TIMM = ["resnet18", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224"]


def marked(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def torchvision_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def timm_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


@contextmanager
def inputs(module: torch.nn.Module):
    """Every batch ``module`` receives (its input, after any normalisation in front of it)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def clean_input(seen: list[torch.Tensor]) -> torch.Tensor:
    """The unoccluded image's pass: the last batch of one (a probe of the output count may come before it)."""
    return [x for x in seen if x.shape[0] == 1][-1]


@contextmanager
def caught():
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        yield said


def ours(said, text: str) -> list[str]:
    return [str(w.message) for w in said if text in str(w.message)]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A small non-square photo file (48 x 64)."""
    path = tmp_path_factory.mktemp("photo") / "small.png"
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# -- a plain module given a photo --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_a_plain_module_given_a_photo_is_explained_at_its_size_with_one_warning(photo, name):
    model = torchvision_model(name)
    with caught() as said:
        result = occlens.explain(model, photo, patch=16, engine="dense")
    (line,) = ours(said, PLAIN)  # one line: what was done, and how to say otherwise
    assert "explained at their own size, not normalised" in line and "preprocess='imagenet'" in line
    assert "\n" not in line and said[0].filename == __file__  # pointed at the caller's line
    assert (result.grid.height, result.grid.width) == (48, 64)
    assert result.meta["preprocess"] == {"from": "none"}
    # a PIL image, the same; preprocess="none" says so on purpose: the same map, no warning
    with caught() as said:
        same = occlens.explain(model, Image.open(photo), patch=16, engine="dense", preprocess="none")
    assert not ours(said, PLAIN)
    np.testing.assert_array_equal(same.delta, result.delta)
    assert same.settings.preprocess == "none" and same.meta["preprocess"] == {"from": "none"}
    # a tensor is taken as given, as before: nothing to warn about, nothing recorded
    with caught() as said:
        tensor = occlens.explain(model, torch.rand(3, 32, 32), patch=16, engine="dense")
    assert not ours(said, PLAIN) and "preprocess" not in tensor.meta


# -- preprocess=: the preset, a weights enum, a Preprocess --------------------------------------------------


@pytest.mark.parametrize("name", marked(TORCHVISION))
def test_a_weights_enum_gives_torchvisions_own_input_and_names(name):
    weights = TORCHVISION[name]
    model = torchvision_model(name)
    with inputs(model) as seen, caught() as said:
        result = occlens.explain(model, CHELSEA, preprocess=weights, **FOUR)
    assert not ours(said, PLAIN)
    expected = weights.transforms()(Image.open(CHELSEA).convert("RGB"))  # resize, crop, to [0, 1], normalise
    torch.testing.assert_close(clean_input(seen)[0], expected, rtol=0, atol=1e-5)
    spelt = f"{type(weights).__name__}.{weights.name}"
    assert result.settings.preprocess == spelt  # the canonical, JSON-able spelling
    applied = result.meta["preprocess"]
    assert applied["from"] == spelt and applied["size"] == [224, 224]
    assert applied["resize"] == weights.transforms().resize_size[0]
    assert result.meta["predicted_name"] == weights.meta["categories"][result.predicted]
    data = result.to_dict()
    assert data["settings"]["preprocess"] == spelt and data["meta"]["preprocess"] == applied
    json.dumps(data)


@pytest.mark.parametrize("name", marked(["resnet18", "vit_b_16"]))
def test_the_imagenet_preset_is_torchvisions_resize_256_crop_224(name):
    model = torchvision_model(name)
    with inputs(model) as seen:
        by_name = occlens.explain(model, CHELSEA, preprocess="imagenet", **FOUR)
    reference = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256),
        torchvision.transforms.CenterCrop(224),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])  # fmt: skip
    torch.testing.assert_close(clean_input(seen)[0], reference(Image.open(CHELSEA).convert("RGB")), rtol=0, atol=1e-5)
    assert by_name.meta["preprocess"]["from"] == "imagenet" and by_name.settings.preprocess == "imagenet"
    assert by_name.meta["predicted_name"] == ResNet18_Weights.IMAGENET1K_V1.meta["categories"][by_name.predicted]
    # a Preprocess of the same values is the same input (recorded as a dict of its fields)
    given = Preprocess(size=(224, 224), resize=256, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225))  # fmt: skip
    with inputs(model) as again:
        same = occlens.explain(model, CHELSEA, preprocess=given, **FOUR)
    torch.testing.assert_close(clean_input(again), clean_input(seen), rtol=0, atol=0)
    assert same.settings.preprocess["size"] == [224, 224] and same.meta["preprocess"]["from"] == "Preprocess"
    np.testing.assert_allclose(same.delta, by_name.delta, rtol=0, atol=1e-6)


def test_preprocess_normalises_tensors_too_but_leaves_their_size():
    model = torchvision_model("resnet18")
    x = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0))
    with inputs(model) as seen:
        result = occlens.explain(model, x, preprocess="imagenet", patch=16, engine="dense")
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(clean_input(seen)[0], (x - mean) / std, rtol=0, atol=1e-6)
    assert (result.grid.height, result.grid.width) == (64, 48)


# -- timm modules bring their own pretrained_cfg ---------------------------------------------------------


@pytest.mark.parametrize("name", marked(TIMM))
def test_a_timm_module_brings_its_pretrained_cfg(name):
    model = timm_model(name)
    with inputs(model) as seen, caught() as said:
        result = occlens.explain(model, CHELSEA, **FOUR)
    assert not ours(said, PLAIN)
    config = timm.data.resolve_data_config({}, model=model)
    expected = timm.data.create_transform(**config)(Image.open(CHELSEA).convert("RGB"))  # timm's own eval input
    torch.testing.assert_close(clean_input(seen)[0], expected, rtol=0, atol=1e-5)
    applied = result.meta["preprocess"]
    assert applied["from"] == "timm pretrained_cfg"  # recorded
    assert applied["interpolation"] == config["interpolation"]
    assert applied["mean"] == pytest.approx(config["mean"]) and applied["std"] == pytest.approx(config["std"])
    assert result.meta["predicted_name"] == occlens.models.imagenet_labels()[result.predicted]  # 1000 outputs


# -- a fine-tuned model never gets ImageNet's names or sizes by guess -----------------------------------


def test_a_fine_tuned_head_never_gets_imagenet_names():
    timm_ten = timm_model("resnet18", num_classes=10)  # its pretrained_cfg still says ImageNet's 1000 classes
    result = occlens.explain(timm_ten, CHELSEA, **FOUR)
    assert result.meta["preprocess"]["from"] == "timm pretrained_cfg"
    assert result.meta["predicted_name"] == str(result.predicted)
    assert [c["name"] for c in result.meta["top_k"]] == [str(c["class"]) for c in result.meta["top_k"]]
    ten = torchvision_model("resnet18", num_classes=10)
    for preprocess in (ResNet18_Weights.DEFAULT, "imagenet"):
        named = occlens.explain(ten, CHELSEA, preprocess=preprocess, **FOUR)
        assert named.meta["predicted_name"] == str(named.predicted), preprocess
    assert load_model(ten, preprocess=ResNet18_Weights.DEFAULT).labels == tuple(str(i) for i in range(10))


def test_a_timm_model_of_another_input_size_keeps_its_size():
    model = timm_model("vit_tiny_patch16_224", img_size=64)  # its pretrained_cfg still says 224
    with inputs(model) as seen:
        result = occlens.explain(model, CHELSEA, patch=16, engine="dense")
    config = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    expected = timm.data.create_transform(**config)(Image.open(CHELSEA).convert("RGB"))
    torch.testing.assert_close(clean_input(seen)[0], expected, rtol=0, atol=1e-5)
    assert result.meta["preprocess"]["size"] == [64, 64]


# -- load_model(module) ------------------------------------------------------------------------------------


def test_load_model_wraps_a_module_without_changing_it():
    model = torchvision_model("resnet18").train()  # in training mode, as torchvision builds it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_model(model, preprocess=ResNet18_Weights.DEFAULT)
    assert isinstance(loaded, LoadedModel) and isinstance(loaded.module, Normalized)
    assert loaded.module.model is model and model.training  # wrapped, not copied, its mode left alone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the probe changed no statistics
    assert loaded.labels == tuple(ResNet18_Weights.DEFAULT.meta["categories"])
    assert loaded.preprocess.size == (224, 224) and loaded.preprocess_from == "ResNet18_Weights.IMAGENET1K_V1"
    # the same as giving the module with preprocess= to explain
    model.eval()
    a = occlens.explain(loaded, CHELSEA, **FOUR)
    b = occlens.explain(model, CHELSEA, preprocess=ResNet18_Weights.DEFAULT, **FOUR)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert a.meta["preprocess"] == b.meta["preprocess"] and a.meta["predicted_name"] == b.meta["predicted_name"]
    # description= goes on top, as for any model
    named = load_model(model, preprocess="imagenet", description={"labels": [f"c{i}" for i in range(1000)]})
    assert named.labels[:2] == ("c0", "c1") and named.preprocess_from == "imagenet"
    # a timm module describes itself
    assert load_model(timm_model("resnet18")).preprocess_from == "timm pretrained_cfg"


def test_load_model_refuses_a_module_that_says_nothing_in_one_line():
    model = torchvision_model("resnet18")
    with pytest.raises(ConfigError, match=r"^the ResNet module says nothing of how images are prepared") as err:
        load_model(model)
    assert err.value.option == "preprocess" and "preprocess='imagenet'" in str(err.value)
    with pytest.raises(ConfigError, match="weights go with an architecture spec"):
        load_model(model, "w.pth", preprocess="imagenet")
    with pytest.raises(ConfigError, match="preprocess='none' keeps images as they are"):
        load_model(model, preprocess="none")


# -- a LoadedModel takes another preprocessing --------------------------------------------------------------


def test_preprocess_replaces_a_loaded_models_own():
    loaded = load_model("timm:resnet18", "random")  # bicubic, resize 235 (its pretrained_cfg)
    given = Preprocess(size=(160, 160), resize=182, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    with inputs(loaded.module.model) as seen:
        result = occlens.explain(loaded, CHELSEA, preprocess=given, patch=80, engine="dense")
    x = clean_input(seen)[0]
    expected = (given(Image.open(CHELSEA)) - 0.5) / 0.25
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert result.meta["preprocess"]["from"] == "Preprocess" and result.meta["preprocess"]["resize"] == 182
    assert loaded.preprocess.resize == 235  # the model itself is left as it was
    with pytest.raises(ConfigError, match="preprocess='none' keeps images as they are"):
        occlens.explain(loaded, CHELSEA, preprocess="none")


# -- preprocess is a setting: checked, canonical, in the fingerprint and on the command line ----------------


def test_preprocess_is_a_setting_in_canonical_form():
    assert Settings(preprocess=ResNet18_Weights.DEFAULT).preprocess == "ResNet18_Weights.IMAGENET1K_V1"
    assert Settings(preprocess=" ImageNet ").preprocess == "imagenet"
    given = Settings(preprocess=Preprocess(size=(8, 6), resize=None, interpolation="nearest", mean=(0.5,),
                                           std=(0.5,)))  # fmt: skip
    assert given.preprocess == {"size": [8, 6], "resize": None, "interpolation": "nearest", "mean": [0.5],
                                "std": [0.5], "channel_order": "RGB"}  # fmt: skip
    assert Settings.from_dict(json.loads(json.dumps(given.to_dict()))) == given
    for bad in ("imagenette", 3, {"size": 8}):
        with pytest.raises(ConfigError) as err:
            Settings(preprocess=bad)
        assert err.value.option == "preprocess"
    with pytest.raises(ConfigError, match="unknown torchvision weights 'ResNet18_Weights.IMAGENET1K_V9'; did you mean"):
        occlens.explain(torchvision_model("resnet18"), CHELSEA, preprocess="ResNet18_Weights.IMAGENET1K_V9")


def test_a_run_records_the_preprocessing_in_its_fingerprint_and_json(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(CHELSEA).resize((90, 60)).save(folder / "cat.png")
    model = load_model(timm_model("resnet18"))
    occlens.run(folder, tmp_path / "out", model, preprocess="imagenet", patch=112, engine="dense", workers=0,
                figures="none")  # fmt: skip
    from occlens.app.manifest import Manifest

    with Manifest(tmp_path / "out") as manifest:
        recorded = manifest.settings()
    assert recorded["options"]["preprocess"] == "imagenet"
    assert recorded["model"]["preprocess"]["resize"] == 256  # not the model's own 235
    (written,) = (tmp_path / "out" / "images").glob("*.json")
    assert json.loads(written.read_text())["meta"]["preprocess"]["from"] == "imagenet"


def test_the_commands_preprocess_flag(tmp_path, capsys):
    argv = ["explain", str(CHELSEA), "--model", "timm:resnet18", "--weights", "random", "--preprocess", "imagenet",
            "--patch", "112", "--engine", "dense", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "o" / "chelsea.json").read_text())
    assert data["settings"]["preprocess"] == "imagenet" and data["meta"]["preprocess"]["resize"] == 256
    capsys.readouterr()
    # it replaces the whole preprocessing: not with flags that change the model's own
    assert main([*argv, "--mean", "0.5,0.5,0.5"]) == 2
    assert "--preprocess replaces the model's whole preprocessing" in capsys.readouterr().err
    # a weights name torchvision does not know: refused before the model loads, with a suggestion
    argv[argv.index("imagenet")] = "ResNet18_Weights.IMAGENET1K_V9"
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--preprocess: unknown torchvision weights" in line and "did you mean ResNet18_Weights.IMAGENET1K_V1" in line


# -- random weights are never silent ------------------------------------------------------------------------


def test_random_weights_are_never_silent(tmp_path):
    with caught() as said:
        loaded = load_model("torchvision:resnet18")
    (line,) = ours(said, RANDOM)
    assert "weights='random'" in line and said[0].filename == __file__
    assert loaded.random_weights and "random weights" in repr(loaded)
    with caught() as said:
        on_purpose = load_model("torchvision:resnet18", "random")  # said on purpose: no warning
    assert not ours(said, RANDOM) and on_purpose.random_weights
    result = occlens.explain(on_purpose, CHELSEA, **FOUR)
    assert result.meta["weights"] == "random"
    assert "random weights" in result.plot()._suptitle.get_text()  # the figure's title
    result.save(tmp_path / "r")
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["weights"] == "random"
    from occlens.app.fingerprint import model_identity

    assert model_identity(on_purpose) == model_identity(loaded) == {"name": "torchvision:resnet18", "weights": None}
    # trained weights: nothing said
    torch.save(on_purpose.module.model.state_dict(), tmp_path / "w.pth")
    trained = load_model("torchvision:resnet18", tmp_path / "w.pth")
    assert not trained.random_weights and "weights" not in occlens.explain(trained, CHELSEA, **FOUR).meta


def test_the_command_says_random_weights(tmp_path, capsys):
    argv = ["explain", str(CHELSEA), "--model", "torchvision:resnet18", "--patch", "112", "--engine", "dense",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert RANDOM in err and "random weights" in out  # the warning, and the table
    assert json.loads((tmp_path / "o" / "chelsea.json").read_text())["meta"]["weights"] == "random"
    assert main([*argv, "--weights", "random"]) == 0
    out, err = capsys.readouterr()
    assert RANDOM not in err and "random weights" in out
