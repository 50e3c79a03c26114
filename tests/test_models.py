"""Any model a user has: nn.Module, TorchScript, ONNX, numpy callables, torchvision/timm checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import occlens
from occlens.cli import main
from occlens.core.errors import ConfigError, ImageError, ModelError, flag
from occlens.models import Normalized, load_model, read_labels
from occlens.models.preprocess import IMAGENET

H, W = 24, 20
PATCH = dict(patch=(8, 6), stride=(5, 4))


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 7),
    ).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(1).random((H, W, 3)).astype(np.float32)


def export_onnx(module: torch.nn.Module, path, dynamic: bool = True) -> None:
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.rand(1, 3, H, W),), str(path), input_names=["pixels"], output_names=["scores"],
            dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}} if dynamic else None, dynamo=False,
        )  # fmt: skip


def as_numpy_fn(module: torch.nn.Module, layout: str):
    def fn(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1 if layout == "NCHW" else 3] == 3
        x = torch.from_numpy(batch if layout == "NCHW" else batch.transpose(0, 3, 1, 2))
        with torch.no_grad():
            return module(x).numpy()

    return fn


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The same normalised CNN in every form occlens runs: (model, explain keyword arguments)."""
    folder = tmp_path_factory.mktemp("models")
    cnn = small_cnn()
    reference = Normalized(cnn, IMAGENET.mean, IMAGENET.std).eval()
    torch.jit.trace(cnn, torch.rand(1, 3, H, W)).save(str(folder / "cnn.pt"))
    out = {
        "module": (reference, {}),
        "torchscript": (load_model(folder / "cnn.pt").module, {}),
        "numpy NCHW": (as_numpy_fn(reference, "NCHW"), {"layout": "NCHW"}),
        "numpy NHWC": (as_numpy_fn(reference, "NHWC"), {"layout": "NHWC"}),
    }
    if __import__("importlib").util.find_spec("onnxruntime"):
        export_onnx(cnn, folder / "cnn.onnx")
        export_onnx(cnn, folder / "cnn1.onnx", dynamic=False)
        out["onnx"] = (load_model(folder / "cnn.onnx").module, {})
        out["onnx, batch fixed at 1"] = (load_model(folder / "cnn1.onnx").module, {})
    return out


@pytest.mark.parametrize(
    "kind", ["module", "torchscript", "onnx", "onnx, batch fixed at 1", "numpy NCHW", "numpy NHWC"]
)
def test_every_kind_of_model_gives_the_same_map(variants, image, kind):
    if kind not in variants:
        pytest.skip("onnxruntime is not installed")
    reference = occlens.explain(variants["module"][0], image, **PATCH)
    model, extra = variants[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixed-batch ONNX model says it loops
        result = occlens.explain(model, image, batch_size=5, **PATCH, **extra)
    assert result.predicted == reference.predicted
    assert np.abs(result.delta - reference.delta).max() <= 1e-5
    assert np.abs(result.pixel_map - reference.pixel_map).max() <= 1e-5


def test_onnx_graph_tells_input_size_layout_and_batch(tmp_path):
    export_onnx(small_cnn(), tmp_path / "m.onnx", dynamic=False)
    loaded = load_model(tmp_path / "m.onnx")
    onnx_model = loaded.module.model
    assert (onnx_model.layout, onnx_model.size, onnx_model.batch) == ("NCHW", (H, W), 1)
    assert loaded.preprocess.size == (H, W) and loaded.labels == tuple(str(i) for i in range(7))
    with pytest.warns(UserWarning, match="fixed at 1"):
        onnx_model(torch.rand(3, 3, H, W))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        onnx_model(torch.rand(2, 3, H, W))
    with pytest.raises(ImageError, match=f"takes {H}x{W} images but got 30x30"):
        onnx_model(torch.rand(1, 3, 30, 30))


def test_onnx_model_of_another_size_is_a_clear_error(tmp_path):
    export_onnx(small_cnn(), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx").module
    with pytest.raises(ImageError, match="resize the image"):
        occlens.explain(model, np.zeros((30, 30, 3), np.float32), patch=10)


class ChannelsLastInput(torch.nn.Module):
    """A classifier whose graph takes N x H x W x C input: it permutes to N x C x H x W before its first conv."""

    def __init__(self, cnn: torch.nn.Module):
        super().__init__()
        self.cnn = cnn

    def forward(self, x):
        return self.cnn(x.permute(0, 3, 1, 2))


class FedNchw(torch.nn.Module):
    """``nhwc`` as occlens calls a torch module (N x C x H x W): the same network, its own permute inside."""

    def __init__(self, nhwc: torch.nn.Module):
        super().__init__()
        self.nhwc = nhwc

    def forward(self, x):
        return self.nhwc(x.permute(0, 2, 3, 1))


def test_an_nhwc_onnx_graph_is_detected_and_gives_the_torch_modules_map(tmp_path, image):
    pytest.importorskip("onnxruntime")
    nhwc = ChannelsLastInput(small_cnn()).eval()
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nhwc, (torch.rand(1, H, W, 3),), str(path), input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}}, dynamo=False)  # fmt: skip
    loaded = load_model(path)
    onnx_model = loaded.module.model
    assert (onnx_model.layout, onnx_model.size, onnx_model.channels, onnx_model.batch) == ("NHWC", (H, W), 3, None)
    reference = Normalized(FedNchw(nhwc), IMAGENET.mean, IMAGENET.std).eval()
    want = occlens.explain(reference, image, **PATCH)
    got = occlens.explain(loaded.module, image, batch_size=5, **PATCH)  # H != W: a transposed layout cannot fit
    assert got.predicted == want.predicted
    assert np.abs(got.delta - want.delta).max() <= 1e-5 and np.abs(got.pixel_map - want.pixel_map).max() <= 1e-5

    # the command line, --model PATH: the photo resized and cropped to the graph's size, then the same map
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(2).random((37, 29, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = ["explain", str(photo), "--model", str(path), "--patch", "8,6", "--stride", "5,4", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "photo.json").read_text())
    x = loaded.preprocess(Image.open(photo).convert("RGB"))
    assert tuple(x.shape) == (3, H, W)
    want = occlens.explain(reference, x, **PATCH)
    assert record["predicted"] == want.predicted
    assert np.abs(np.asarray(record["delta"]) - want.delta).max() <= 1e-5


@pytest.mark.slow
def test_missing_onnxruntime_says_which_extra_to_install(tmp_path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from occlens.models import load_model\n"
        "from occlens.core.errors import ConfigError\n"
        "try:\n    load_model(sys.argv[1])\nexcept ConfigError as e:\n    print(e)\n"
    )
    (tmp_path / "m.onnx").write_bytes(b"not really onnx")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert "pip install 'occlens[onnx]'" in out.stdout, out.stderr


def save_random(kind: str, name: str, path, **kw) -> torch.nn.Module:
    torch.manual_seed(1)
    net = load_model(f"{kind}:{name}", "random", description=kw or None).module.model
    torch.save(net.state_dict(), path)
    return net


@pytest.mark.parametrize("kind, name", [("torchvision", "resnet18"), ("timm", "resnet10t")])
def test_architecture_checkpoints_round_trip_through_weights(tmp_path, kind, name):
    net = save_random(kind, name, tmp_path / "w.pth", num_classes=5)
    loaded = load_model(f"{kind}:{name}", tmp_path / "w.pth", description={"num_classes": 5})
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.module.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert loaded.labels == ("0", "1", "2", "3", "4")
    assert loaded.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_torchvision_preprocessing_comes_from_its_weights_metadata():
    pre = load_model("torchvision:resnet50", "random", description={"num_classes": 3}).preprocess
    assert (pre.size, pre.resize, pre.interpolation) == ((224, 224), 232, "bilinear")  # IMAGENET1K_V2's transforms


def test_cli_runs_an_architecture_with_weights_and_labels(tmp_path, capsys):
    save_random("torchvision", "resnet18", tmp_path / "w.pth", num_classes=3)
    (tmp_path / "names.txt").write_text("apple\nbanana\ncherry\n")
    img = tmp_path / "x.png"
    occlens.core.image.Image.new("RGB", (50, 40), (90, 20, 200)).save(img)
    argv = ["explain", img, "--model", "torchvision:resnet18", "--weights", tmp_path / "w.pth", "--num-classes",
            "3", "--labels", tmp_path / "names.txt", "--label", "banana", "--patch", "112",
            "--out", tmp_path / "o"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "o" / "x.json").read_text())
    assert (
        data["label"] == 1
        and data["meta"]["label_name"] == "banana"
        and data["meta"]["model"] == "torchvision:resnet18"
    )


class Custom(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_full_pickles_are_refused_unless_trusted(tmp_path):
    torch.save(Custom(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match="arbitrary code.*pass trust_pickle,") as caught:
        load_model(tmp_path / "whole.pt")
    assert caught.value.option == "trust_pickle" and caught.value.value == str(tmp_path / "whole.pt")
    assert "pass --trust-pickle," in caught.value.render(flag)  # the command's spelling
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True, description={"labels": ["r", "g", "b"]})
    assert isinstance(loaded.module.model, Custom)
    torch.save({"state_dict": Custom()}, tmp_path / "ckpt.pth")
    with pytest.raises(ConfigError, match="pass trust_pickle"):
        load_model("torchvision:resnet18", tmp_path / "ckpt.pth")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("torchvision:resnet181", "unknown torchvision architecture 'resnet181'; did you mean resnet18"),
        ("timm:convnext_tinny", "did you mean convnext_tiny"),
        ("no/such/model.pt", "not a file, nor 'default'"),
    ],
)
def test_unknown_models_suggest_names(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_model(spec)


def test_weights_that_do_not_fit_name_the_first_mismatching_key(tmp_path):
    save_random("torchvision", "resnet18", tmp_path / "w.pth", num_classes=5)
    mismatch = r"'fc.weight' has shape \(5, 512\) but the architecture wants \(1000, 512\)"
    with pytest.raises(ModelError, match=mismatch) as caught:
        load_model("torchvision:resnet18", tmp_path / "w.pth")
    assert caught.value.option == "num_classes" and caught.value.render(flag).endswith("(--num-classes)?")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match="lack 'bn1.weight'"):
        load_model("torchvision:resnet18", tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a PyTorch file"):
        load_model("torchvision:resnet18", tmp_path / "junk.pth")


def test_a_state_dict_alone_asks_for_its_architecture(tmp_path):
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match="name its architecture: model torchvision:NAME weights sd.pt$") as caught:
        load_model(tmp_path / "sd.pt")
    assert caught.value.render(flag).endswith("--model torchvision:NAME --weights sd.pt")


def test_description_beside_the_model_and_flags_on_top(tmp_path):
    torch.jit.trace(small_cnn(), torch.rand(1, 3, H, W)).save(str(tmp_path / "m.pt"))
    (tmp_path / "m.json").write_text(
        json.dumps({"input_size": [H, W], "resize": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "labels": "names.json"})
    )
    (tmp_path / "names.json").write_text(json.dumps({str(i): f"c{i}" for i in range(7)}))
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.preprocess.size == (H, W) and loaded.preprocess.resize == 32 and loaded.labels[3] == "c3"
    loaded = load_model(tmp_path / "m.pt", description={"output": "probs", "channel_order": "BGR"})
    assert loaded.output == "probs" and loaded.preprocess.channel_order == "BGR" and loaded.labels[0] == "c0"
    (tmp_path / "m.json").write_text(json.dumps({"mean": [0, 0, 0], "colour": "blue"}))
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        load_model(tmp_path / "m.pt")


def test_toml_description(tmp_path):
    pytest.importorskip("tomllib")
    torch.jit.trace(small_cnn(), torch.rand(1, 3, H, W)).save(str(tmp_path / "m.pt"))
    (tmp_path / "m.toml").write_text(f'input_size = [{H}, {W}]\nresize = 30\noutput = "logits"\n')
    assert load_model(tmp_path / "m.pt").preprocess.resize == 30


def test_bgr_models_get_reversed_channels():
    seen = []
    model = Normalized(lambda x: seen.append(x) or x.mean(dim=(2, 3)), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "BGR")
    x = torch.rand(1, 3, 4, 4)
    model(x)
    assert torch.equal(seen[0], x.flip(1))


@pytest.mark.parametrize(
    "text, suffix, expected",
    [
        ("cat\ndog\n\n", ".txt", ("cat", "dog")),
        ('["cat", "dog"]', ".json", ("cat", "dog")),
        ('{"1": "dog", "0": "cat"}', ".json", ("cat", "dog")),
    ],
)
def test_label_files(tmp_path, text, suffix, expected):
    (tmp_path / f"l{suffix}").write_text(text)
    assert read_labels(tmp_path / f"l{suffix}") == expected


@pytest.mark.parametrize(
    "text, suffix, message",
    [("", ".txt", "empty"), ('{"0": "a", "2": "b"}', ".json", "none missing"), ("{", ".json", "not valid JSON")],
)
def test_bad_label_files(tmp_path, text, suffix, message):
    (tmp_path / f"l{suffix}").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_labels(tmp_path / f"l{suffix}")


def test_a_model_that_fails_on_a_batch_is_a_model_error(image):
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) > 1:
            raise RuntimeError("backend went away")
        return torch.zeros(len(batch), 4)

    with pytest.raises(ModelError, match="the model failed on windows 0..4 .*RuntimeError: backend went away"):
        occlens.explain(flaky, image, batch_size=5, **PATCH)


def test_bad_layout_and_default_model_options():
    with pytest.raises(ConfigError, match="layout must be 'NCHW' or 'NHWC'"):
        occlens.explain(lambda a: a, np.zeros((8, 8, 3)), layout="CHW", patch=4)
    with pytest.raises(ConfigError, match="comes with its own weights"):
        load_model("default", description={"output": "probs"})


def test_random_architecture_weights_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_model("torchvision:resnet18", "random", description={"num_classes": 3}).module.model
    assert torch.equal(torch.rand(3), expected_next)
    b = load_model("torchvision:resnet18", "random", description={"num_classes": 3}).module.model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
