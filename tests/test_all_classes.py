"""``all_classes=True``: every class's map and what the model says instead, from the same forward passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, brute_windows, random_image

import occlens
from occlens.cli import main


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += len(x)
        return self.net(x)


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_every_class_map_equals_its_own_run(engine):
    image, model = random_image(3, 20, 24, seed=3), TinyConvNet(classes=6)
    result = occlens.explain(model, image, 4, patch=6, stride=3, engine=engine, all_classes=True)
    assert result.engine == engine and result.all_delta.shape == (6, result.grid.rows, result.grid.cols)
    assert result.all_delta.dtype == np.float32 and not result.all_delta.flags.writeable
    for k in range(6):
        alone = occlens.explain(model, image, patch=6, stride=3, engine=engine, target=k)
        np.testing.assert_allclose(result.all_delta[k], alone.delta, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.all_delta[result.target], result.delta, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.all_delta[4], result.label_map.delta, rtol=0, atol=1e-6)


def test_the_flip_map_is_the_top_class_of_each_occluded_copy():
    image, net = random_image(3, 20, 24, seed=5), TinyConvNet(classes=6, seed=2)
    result = occlens.explain(net, image, patch=8, stride=4, all_classes=True, fill=0.0)
    copies = []
    for top, bottom, left, right in brute_windows(20, 24, (8, 8), (4, 4))[0]:
        x = image.clone()
        x[:, top:bottom, left:right] = 0.0
        copies.append(x)
    with torch.no_grad():
        want = net(torch.stack(copies)).argmax(dim=1).numpy().reshape(result.grid.rows, result.grid.cols)
    np.testing.assert_array_equal(result.flip_map, want)
    assert result.flips == int((want != result.predicted).sum()) > 0  # this image has windows that flip
    counts = {c: int((want == c).sum()) for c in set(want.ravel().tolist()) - {result.predicted}}
    assert result.instead() == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]


def test_all_classes_costs_no_forward_pass_more():
    image = random_image(3, 20, 24)
    plain, every = Counting(TinyConvNet()), Counting(TinyConvNet())
    occlens.explain(plain, image, patch=4, engine="dense")
    occlens.explain(every, image, patch=4, engine="dense", all_classes=True)
    assert plain.images == every.images


def test_saved_in_the_npz_summarised_in_the_json_and_drawn(tmp_path):
    image = random_image(3, 20, 24, seed=5)
    result = occlens.explain(TinyConvNet(classes=6, seed=2), image, patch=8, stride=4, all_classes=True)
    npz, js = result.save(tmp_path / "r")
    saved = json.loads(js.read_text())
    instead = [{"class": c, "name": None, "windows": n} for c, n in result.instead()]  # a bare module: no names
    assert saved["all_classes"] == {"flips": result.flips, "windows": result.windows, "instead": instead}
    assert "all_delta" not in json.dumps(saved)
    back = occlens.OcclusionResult.load(tmp_path / "r")
    np.testing.assert_array_equal(back.all_delta, result.all_delta)
    np.testing.assert_array_equal(back.flip_map, result.flip_map)
    assert back.settings.all_classes
    titles = [ax.get_title() for ax in result.plot().axes]
    assert any(t.startswith("what the model says instead") for t in titles)
    plain = occlens.explain(TinyConvNet(classes=6, seed=2), image, patch=8, stride=4)
    assert plain.flip_map is None and plain.flips is None
    with pytest.raises(occlens.OcclensError, match="all_classes=True") as info:
        plain.instead()  # not computed, which is not "nothing flips"
    assert info.value.option == "all_classes" and info.value.fix == "explain with all_classes=True"

    def constant(z):  # says class 0, whatever is occluded: nothing flips, which is an empty list
        return torch.tensor([3.0, 0.0, 1.0]).expand(len(z), 3)

    steady = occlens.explain(constant, image, patch=4, all_classes=True)
    assert steady.flips == 0 and steady.instead() == []
    assert not any("instead" in ax.get_title() for ax in plain.plot().axes)
    assert "all_classes" not in plain.to_dict()


def test_the_command_writes_every_class(tmp_path, capsys):
    from PIL import Image

    picture = tmp_path / "a.png"
    Image.fromarray((random_image(3, 64, 64).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(picture)
    assert main(["explain", str(picture), "--patch", "112", "--all-classes", "--out", str(tmp_path / "o")]) == 0
    with np.load(tmp_path / "o" / "a.npz") as z:
        assert z["all_delta"].shape == (1000, 2, 2) and z["flip_map"].shape == (2, 2)
    assert json.loads((tmp_path / "o" / "a.json").read_text())["settings"]["all_classes"] is True
    capsys.readouterr()


def half_red_half_green(path):
    """32 x 32: red on the left (mean 100), a little less green on the right (mean 95). The model says red;
    gray over any left window of 8 x 8 makes it green, over a right one it stays red."""
    from PIL import Image

    px = np.zeros((32, 32, 3), np.uint8)
    px[:, :16, 0], px[:, 16:, 1] = 200, 190
    Image.fromarray(px).save(path)
    return path


def test_the_command_names_what_the_model_says_instead(tmp_path, capsys):
    from test_runs import make_model

    image = half_red_half_green(tmp_path / "a.png")
    argv = ["explain", str(image), "--model", str(make_model(tmp_path / "m")), "--patch", "8", "--all-classes",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a: 8 of 16 windows change the prediction, to green (8)" in out
    saved = json.loads((tmp_path / "o" / "a.json").read_text())
    assert saved["predicted"] == 0 and saved["meta"]["predicted_name"] == "red"
    assert saved["all_classes"] == {"flips": 8, "windows": 16, "instead": [{"class": 1, "name": "green", "windows": 8}]}
    back = occlens.OcclusionResult.load(tmp_path / "o" / "a")  # the JSON's new fields read as before
    assert back.flips == 8 and back.instead() == [(1, 8)]
