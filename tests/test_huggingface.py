"""Hugging Face folders (what ``save_pretrained`` writes) through ``occlens.load_model(DIR)`` and ``--model DIR``.

Tiny random models are built here from configs and saved with their image processors into temporary
folders: nothing is downloaded. The maps are compared with the module's own, fed as its image
processor says (normalised here, by hand, from the processor's mean and std).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import (
    BertConfig,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTMAEConfig,
    ViTModel,
)

import occlens
from occlens.app.fingerprint import model_identity
from occlens.cli import main
from occlens.core.errors import ConfigError, ModelError
from occlens.models import Preprocess
from occlens.models.huggingface import patch_of

VIT_NAMES = {0: "cat", 1: "dog", 2: "bird"}
CONVNEXT_NAMES = {0: "apple", 1: "banana", 2: "cherry", 3: "plum"}
SIZE = 32  # both models' input: 32 x 32


def vit_config(**extra) -> ViTConfig:
    return ViTConfig(image_size=SIZE, patch_size=8, num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                     intermediate_size=32, num_labels=3, id2label=VIT_NAMES,
                     label2id={v: k for k, v in VIT_NAMES.items()}, initializer_range=0.3, **extra)  # fmt: skip


def spread(model: torch.nn.Module, head: torch.nn.Linear, factor: float) -> torch.nn.Module:
    """Random weights whose logits move visibly when a window is occluded, short of a saturated softmax
    (the maps are then far from 0)."""
    with torch.no_grad():
        head.weight.mul_(factor)
    return model.eval()


def save_vit(folder, seed: int = 0, **extra):
    """A tiny ViT classifier and its image processor (mean/std 0.5, resize straight to 32 x 32) in ``folder``."""
    torch.manual_seed(seed)
    model = ViTForImageClassification(vit_config(**extra))
    spread(model, model.classifier, 1.0)  # initializer_range 0.3 does it: p(Q) about 0.9
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, resample=2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def save_convnext(folder):
    """A tiny ConvNeXt with a processor of its own mean/std: shorter side to int(32 / 0.875) = 36, crop 32, bicubic."""
    torch.manual_seed(1)
    config = ConvNextConfig(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                            num_labels=4, id2label=CONVNEXT_NAMES, label2id={v: k for k, v in CONVNEXT_NAMES.items()},
                            image_size=SIZE, layer_scale_init_value=1.0)  # fmt: skip
    model = ConvNextForImageClassification(config)
    spread(model, model.classifier, 40.0)  # p(Q) about 0.7
    processor = ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875, resample=3,
                                       image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])  # fmt: skip
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


class Reference(torch.nn.Module):
    """The Hugging Face module fed as its processor says: ``(x - mean) / std``, then ``.logits``."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model(pixel_values=(x - self.mean) / self.std).logits


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    return (folder, *save_vit(folder))


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convnext")
    return (folder, *save_convnext(folder))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand((3, SIZE, SIZE), generator=torch.Generator().manual_seed(3))


def photo(path, width: int = 60, height: int = 45):
    """A smooth non-square photo (gradients and a bright disc): resampling filters agree on it, crops do not."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    disc = ((xx - 0.62) ** 2 + (yy - 0.3) ** 2 < 0.04).astype(float)
    px = np.stack([xx, yy, 0.3 + 0.6 * disc], axis=-1)
    Image.fromarray((px.clip(0, 1) * 255).astype(np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# the map, the names, the preprocessing


@pytest.mark.parametrize("which", ["vit", "convnext"])
def test_the_folders_map_is_the_modules_own(request, x, which):
    folder, model, processor = request.getfixturevalue(which)
    loaded = occlens.load_model(folder)
    got = occlens.explain(loaded, x, patch=8, stride=4)
    want = occlens.explain(Reference(model, processor).eval(), x, patch=8, stride=4, engine="dense")
    assert np.abs(want.delta).max() > 0.05  # a map far from zero, so that agreeing to 1e-5 means something
    assert got.predicted == want.predicted
    assert np.abs(got.delta - want.delta).max() <= 1e-5
    assert np.abs(got.pixel_map - want.pixel_map).max() <= 1e-5
    assert type(loaded.module(x[None])) is torch.Tensor  # the logits, not transformers' output object
    names = model.config.id2label
    assert loaded.labels == tuple(names[i] for i in range(len(names)))
    assert got.meta["predicted_name"] == names[got.predicted] and got.meta["model"] == str(folder)
    title = " ".join(t.get_text() for t in got.plot().texts)
    assert f"predicted Q = {got.predicted} {names[got.predicted]} (p = " in title


def test_the_image_processors_config_becomes_the_preprocessing(vit, convnext):
    assert occlens.load_model(vit[0]).preprocess == Preprocess(
        size=(SIZE, SIZE), resize=None, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    assert occlens.load_model(convnext[0]).preprocess == Preprocess(
        size=(SIZE, SIZE), resize=36, interpolation="bicubic", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
    )


@pytest.mark.parametrize("which", ["vit", "convnext"])
def test_a_photo_becomes_the_pixels_the_processor_makes(request, tmp_path, which):
    """occlens's resize, crop and normalisation give the processor's own pixel_values (to resampling rounding)."""
    folder, _, processor = request.getfixturevalue(which)
    loaded = occlens.load_model(folder)
    image = Image.open(photo(tmp_path / "p.png")).convert("RGB")
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    pre = loaded.preprocess
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    ours = (pre(image) - mean) / std
    assert ours.shape == theirs.shape == (3, SIZE, SIZE)
    diff = ((ours - theirs) * std).abs()  # in [0, 1] pixel units
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.08, (float(diff.mean()), float(diff.max()))


def test_a_multi_label_head_is_read_as_independent_sigmoids(tmp_path, x):
    model, processor = save_vit(tmp_path, seed=2, problem_type="multi_label_classification")
    loaded = occlens.load_model(tmp_path)
    assert loaded.output == "sigmoid"
    reference = Reference(model, processor).eval()
    got = occlens.explain(loaded, x, patch=8)
    want = occlens.explain(reference, x, patch=8, output="sigmoid", engine="dense")
    softmax = occlens.explain(reference, x, patch=8, output="logits", engine="dense")
    assert np.abs(got.delta - want.delta).max() <= 1e-5
    assert np.abs(softmax.delta - want.delta).max() > 1e-3  # the two heads give other maps
    # a description on top still wins, as for every model
    assert occlens.load_model(tmp_path, description={"output": "logits"}).output == "logits"


def test_the_patch_is_the_patch_embeddings(vit, convnext, tmp_path):
    loaded = occlens.load_model(vit[0])
    assert loaded.patch == 8 and "patch=8" in repr(loaded)
    assert occlens.load_model(convnext[0]).patch == 4  # ConvNeXt's stem: a 4 x 4 convolution of stride 4
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=2)  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(tmp_path)  # no preprocessor_config.json either
    resnet = occlens.load_model(tmp_path)
    assert resnet.patch is None and "patch=" not in repr(resnet)  # a 7 x 7 stem of stride 2 is no patch embedding
    assert resnet.preprocess == Preprocess(size=(224, 224), resize=256, interpolation="bilinear",
                                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # fmt: skip


def test_a_patch_size_without_a_patch_embedding_is_no_patch():
    """The patch is the config's only where the first convolution cuts the input into those patches."""
    config = SimpleNamespace(patch_size=8)
    embed = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Conv2d(4, 4, 2, stride=2))
    assert patch_of(config, embed) == 8 and patch_of(SimpleNamespace(patch_size=[8, 8]), embed) == 8
    for first in (torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.Conv2d(3, 4, 8, stride=4),
                  torch.nn.Conv2d(3, 4, 8, stride=8, padding=1)):  # fmt: skip
        assert patch_of(config, torch.nn.Sequential(first, torch.nn.Conv2d(4, 4, 8, stride=8))) is None
    assert patch_of(SimpleNamespace(patch_size=None), embed) is None and patch_of(SimpleNamespace(), embed) is None


# --------------------------------------------------------------------------------------------------
# nothing downloaded


def test_nothing_is_downloaded_and_the_environment_is_left_as_it_was(vit, tmp_path, monkeypatch, x):
    """The folder's config names a model on the Hub; the network is cut: it loads from the folder all the same."""
    folder = tmp_path / "named"
    shutil.copytree(vit[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "occlens-tests/not-on-the-hub"}))
    tried = []

    def no_network(*args, **kwargs):
        tried.append(args)
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    calls = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForImageClassification,
                transformers.AutoImageProcessor):  # fmt: skip
        original = cls.from_pretrained

        def spy(*args, _original=original, **kwargs):
            calls.append(kwargs.get("local_files_only"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hub = sys.modules["huggingface_hub.constants"]
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)

    loaded = occlens.load_model(folder)
    want = occlens.explain(occlens.load_model(vit[0]), x, patch=8)
    assert np.array_equal(occlens.explain(loaded, x, patch=8).delta, want.delta)
    assert not tried and len(calls) >= 3 and all(calls)  # every from_pretrained with local_files_only=True
    assert "HF_HUB_OFFLINE" not in os.environ and hub.HF_HUB_OFFLINE is False  # put back


# --------------------------------------------------------------------------------------------------
# bad folders


def test_folders_that_are_not_image_classifiers_say_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config.json in .*empty: not a model folder written by save_pretrained"):
        occlens.load_model(tmp_path / "empty")
    ViTMAEConfig(image_size=SIZE, patch_size=8).save_pretrained(tmp_path / "mae")
    with pytest.raises(ConfigError, match=r"a 'vit_mae' model \(ViTMAEConfig\), which is not an image classifier"):
        occlens.load_model(tmp_path / "mae")
    torch.manual_seed(0)
    ViTModel(vit_config()).save_pretrained(tmp_path / "backbone")  # a ViT without its classification head
    with pytest.raises(ModelError, match=r"the weights lack 'classifier\.(weight|bias)'.*saved from ViTModel"):
        occlens.load_model(tmp_path / "backbone")
    (tmp_path / "backbone" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="cannot load the model's weights"):
        occlens.load_model(tmp_path / "backbone")


def test_options_that_do_not_apply_to_a_folder(vit):
    with pytest.raises(ConfigError, match="weights go with an architecture"):
        occlens.load_model(vit[0], "w.pth")
    with pytest.raises(ConfigError, match="num_classes applies to torchvision:NAME and timm:NAME"):
        occlens.load_model(vit[0], description={"num_classes": 5})


def test_without_transformers_a_folder_says_which_extra_to_install(vit, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # the environment: transformers cannot be imported
    with pytest.raises(ConfigError) as err:
        occlens.load_model(vit[0])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{vit[0]} is a Hugging Face folder; install occlens[hf] (transformers) to load it")
    argv = ["explain", str(photo(tmp_path / "p.png")), "--model", str(vit[0]), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "occlens: error: " in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# the command line


def test_the_command_explains_with_a_folder(vit, tmp_path, capsys):
    folder, model, processor = vit
    out = tmp_path / "out"
    argv = ["explain", str(photo(tmp_path / "p.png")), "--model", str(folder), "--patch", "8", "--label", "dog",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "p.json").read_text())
    loaded = occlens.load_model(folder)
    x = loaded.preprocess(Image.open(tmp_path / "p.png").convert("RGB"))
    want = occlens.explain(Reference(model, processor).eval(), x, patch=8, engine="dense")
    assert record["predicted"] == want.predicted and record["label"] == 1
    assert record["meta"]["predicted_name"] == VIT_NAMES[want.predicted] and record["meta"]["label_name"] == "dog"
    assert np.abs(np.asarray(record["delta"]) - want.delta).max() <= 1e-5
    assert (out / "p.png").is_file()


def bert_folder(tmp):
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp / "bert"
    )
    return tmp / "bert"


BAD = {  # build(tmp, vit folder) -> (--model, extra flags); the one line of the error says
    "no config.json": (lambda t, v: ((t / "empty").mkdir() or t / "empty", []), "no config.json in"),
    "a text model": (lambda t, v: (bert_folder(t), []), "describes a 'bert' model (BertConfig)"),
    "a label the head lacks": (lambda t, v: (v, ["--label", "zebra"]), "label 'zebra' is not a class name"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_folders_and_labels_through_the_command(case, vit, tmp_path, capsys):
    build, fragment = BAD[case]
    image = photo(tmp_path / "p.png")
    using, extra = build(tmp_path, vit[0])
    before = set(tmp_path.rglob("*"))
    code = main(["explain", str(image), "--model", str(using), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("occlens: error:")]
    assert code == 2 and len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err
    assert set(tmp_path.rglob("*")) == before  # nothing written


# --------------------------------------------------------------------------------------------------
# the run fingerprint


def test_a_folders_identity_is_its_files_contents(vit, tmp_path):
    first = model_identity(occlens.load_model(vit[0]))
    shutil.copytree(vit[0], tmp_path / "copy")
    assert model_identity(occlens.load_model(tmp_path / "copy")) == first  # contents, not the path
    save_vit(tmp_path / "copy", seed=5)  # other weights under the same names
    assert model_identity(occlens.load_model(tmp_path / "copy")) != first
