"""Targets beyond a class (occlens.targets): segment, regression, margin and any function of the output.

Analytic models give exact maps (a segmenter whose per-pixel logits are local sums, a linear regression),
Captum's Occlusion over a forward function reducing the output to the same score is the oracle on tiny
random models, one set of forward passes serves every sub-target (counted), and bad targets are one line.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import Recorder
from PIL import Image

import occlens
from occlens.core.result import OcclusionResult, write_npz
from occlens.core.targets import Function, Margin, Regression, Segment, parse_target, portable
from occlens.models.preprocess import Preprocess

targets = occlens.targets


class LocalSums(torch.nn.Module):
    """A segmenter: class c's logit at a pixel is ``A[c]`` times the sum of input channel ``c % 3`` over its 3 x 3
    neighbourhood (zeros outside), plus ``B[c]``; torchvision's ``{"out": ...}`` output."""

    A = (1.0, -0.7, 0.9, 0.4)
    B = (0.1, 0.0, -0.2, 0.3)

    def __init__(self):
        super().__init__()
        w = torch.zeros(4, 3, 3, 3)
        for c, a in enumerate(self.A):
            w[c, c % 3] = a
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.tensor(self.B))

    def forward(self, x):
        return {"out": self.conv(x)}


def local_sums(x: np.ndarray) -> np.ndarray:
    """LocalSums by hand in float64: 4 x H x W logits of a 3 x H x W image."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    box = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    return np.stack([a * box[c % 3] + b for c, (a, b) in enumerate(zip(LocalSums.A, LocalSums.B, strict=True))])


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(0)
    return z - m - np.log(np.exp(z - m).sum(0))


def windows(grid):
    for rs in zip(*grid.row_spans(), strict=True):
        for cs in zip(*grid.col_spans(), strict=True):
            yield rs, cs


def segment_map_by_hand(x: np.ndarray, grid, cls: int, region: np.ndarray, fill=0.5) -> np.ndarray:
    """δL of a segment, window by window: s = mean over the region of log_softmax(local sums)[cls]."""

    def s(image):
        return float(log_softmax(local_sums(image))[cls][region].mean())

    clean = s(x)
    out = []
    for (r0, r1), (c0, c1) in windows(grid):
        y = x.copy()
        y[:, r0:r1, c0:c1] = fill
        out.append(s(y) - clean)  # δL = L - L_occl = s_occl - s
    return np.array(out).reshape(grid.rows, grid.cols)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 18, 22, generator=torch.Generator().manual_seed(3))


def test_a_segment_of_local_sums_is_exact(image):
    model = LocalSums().eval()
    x = image.numpy()
    predicted = log_softmax(local_sums(x)).argmax(0)
    got = occlens.explain(model, image, target="segment", patch=(4, 5), stride=(3, 4), engine="dense")
    classes = [int(c) for c in np.unique(predicted)]
    assert got.target == "segment" and got.target_kind == "segment" and len(classes) >= 2
    assert got.sub_targets == tuple(str(c) for c in classes)  # every predicted segment, one sub-target each
    assert got.deltas.shape == (len(classes), got.grid.rows, got.grid.cols)  # sub-targets first, then the grid
    assert got.pixel_maps.shape == (len(classes), 18, 22)
    assert got.predicted is None and got.probabilities is None and got.top_k() == [] and got.correct is None
    np.testing.assert_array_equal(got.target_arrays["segmentation"], predicted)
    for t, c in enumerate(classes):
        region = predicted == c
        np.testing.assert_array_equal(got.target_arrays["regions"][t], region)
        assert got.target_info[t] == {"class": c, "class_name": str(c), "pixels": int(region.sum()), "of": 18 * 22}
        want = segment_map_by_hand(x, got.grid, c, region)
        np.testing.assert_allclose(got.deltas[t], want, atol=2e-5)
        clean = float(log_softmax(local_sums(x))[c][region].mean())
        assert got.target_maps[t].loss == pytest.approx(-clean, abs=1e-5)  # L = -s
    # locality: a window farther than one pixel from every pixel of a region cannot change its score
    grid, region = got.grid, predicted == classes[0]
    near = np.pad(region, 1)
    near = sum(near[i : i + 18, j : j + 22] for i in range(3) for j in range(3)) > 0
    for i, ((r0, r1), (c0, c1)) in enumerate(windows(grid)):
        if not near[r0:r1, c0:c1].any():
            assert got.deltas[0].ravel()[i] == 0.0


class NaNWhereGray(LocalSums):
    """LocalSums, but an unpicked class's logit is NaN at a pixel the gray fill (0.5) covers."""

    def forward(self, x):
        out = self.conv(x)
        gray = (x == 0.5).all(1)
        out[:, 3] = torch.where(gray, torch.full_like(out[:, 3], float("nan")), out[:, 3])
        return {"out": out}


def test_a_nan_in_an_occluded_copys_pixel_scores_is_one_line(image):
    model = NaNWhereGray().eval()
    with pytest.raises(occlens.ModelError) as err:
        occlens.explain(model, image, target=targets.segment(0, (0, 0, 22, 18)), patch=4, engine="dense")
    assert "NaN or infinite per-pixel scores on an occluded copy" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_segment_with_a_box_region_and_the_default_of_a_segmenter(image):
    model = LocalSums().eval()
    x = image.numpy()
    boxed = occlens.explain(model, image, target=targets.segment(2, (4, 3, 15, 11)), patch=4, engine="dense")
    region = np.zeros((18, 22), bool)
    region[3:11, 4:15] = True  # the pixels whose centres lie in x 4..15, y 3..11
    np.testing.assert_array_equal(boxed.target_arrays["regions"][0], region)
    np.testing.assert_allclose(boxed.delta, segment_map_by_hand(x, boxed.grid, 2, region), atol=2e-5)
    assert boxed.target == "segment:2:4,3,15,11" and parse_target(boxed.target) == targets.segment(2, (4, 3, 15, 11))
    plain = occlens.explain(model, image, patch=4, engine="dense")  # a segmenter's default: every segment
    listed = occlens.explain(model, image, target=targets.segment(), patch=4, engine="dense")
    assert plain.target == "segment" and plain.sub_targets == listed.sub_targets
    np.testing.assert_array_equal(plain.deltas, listed.deltas)


def test_a_region_given_on_the_photo_goes_through_the_preprocessing():
    """A 40 x 60 photo resized to 20 x 30 and centre-cropped to 20 x 20: the model sees x 10..50 of it."""
    pre = Preprocess(size=(20, 20), resize=20, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    model = occlens.load_model(LocalSums().eval(), preprocess=pre)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    got = occlens.explain(model, photo, target=targets.segment(1, (10, 0, 30, 40)), patch=5)
    region = np.zeros((20, 20), bool)
    region[:, :10] = True  # x 10..30 of the photo is the left half of the crop
    np.testing.assert_array_equal(got.target_arrays["regions"][0], region)
    mask = np.zeros((40, 60), bool)
    mask[20:, 30:50] = True  # the same through a mask: the crop's bottom right quarter
    by_mask = occlens.explain(model, photo, target=targets.segment(1, mask), patch=5)
    want = np.zeros((20, 20), bool)
    want[10:, 10:] = True
    np.testing.assert_array_equal(by_mask.target_arrays["regions"][0], want)
    assert by_mask.target.startswith("segment:1:mask=")
    with pytest.raises(occlens.ConfigError, match="covers no pixel of the model's 20 x 20 output"):
        occlens.explain(model, photo, target=targets.segment(1, (0, 0, 9, 40)), patch=5)  # the crop cuts it away
    with pytest.raises(occlens.ConfigError, match=r"mask of shape \(20, 20\), but the image is 40 x 60"):
        occlens.explain(model, photo, target=targets.segment(1, np.ones((20, 20), bool)), patch=5)


def test_every_sub_target_from_one_set_of_forward_passes(image):
    model = Recorder(LocalSums())
    got = occlens.explain(model, image, target="segment", patch=4, batch_size=7, engine="dense")
    assert len(got.sub_targets) >= 2
    assert len(model.batches) == 1 + -(-got.windows // 7)  # the clean pass, then the windows in batches of 7, once


class TinySegmenter(torch.nn.Module):
    """conv, relu, conv: random weights, a segmenter the incremental engine traces."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, classes, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_the_incremental_engine_explains_a_segmenter_as_the_dense_one(image):
    model = TinySegmenter().eval()
    dense = occlens.explain(model, image, target="segment", patch=4, engine="dense")
    incremental = occlens.explain(model, image, target="segment", patch=4, engine="incremental")
    assert incremental.engine == "incremental" and incremental.sub_targets == dense.sub_targets
    np.testing.assert_allclose(incremental.deltas, dense.deltas, atol=1e-5)


def captum_map(forward, image, patch, stride):
    from captum.attr import Occlusion

    attr = Occlusion(forward).attribute(image[None], sliding_window_shapes=(3, *patch), strides=(3, *stride),
                                        baselines=0.5, perturbations_per_eval=16)  # fmt: skip
    return -attr[0, 0].double().numpy()  # every channel carries the same map; occlens's sign is the opposite


def test_the_captum_oracle_for_a_segment(image):
    pytest.importorskip("captum")
    model = TinySegmenter().eval()
    got = occlens.explain(model, image, target="segment", patch=(5, 4), stride=(3, 3), engine="dense")
    for t, info in enumerate(got.target_info):
        region = torch.as_tensor(np.array(got.target_arrays["regions"][t]))
        cls = info["class"]

        def s(z, region=region, cls=cls):
            return torch.log_softmax(model(z).double(), 1)[:, cls][:, region].mean(1)

        np.testing.assert_allclose(got.pixel_maps[t], captum_map(s, image, (5, 4), (3, 3)), atol=1e-5)


class Classifier(torch.nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_captum_oracle_for_a_regression_and_a_margin(image):
    pytest.importorskip("captum")
    model = Classifier().eval()
    reg = occlens.explain(model, image, target=targets.regression(3), patch=(4, 6), stride=(2, 3))
    np.testing.assert_allclose(reg.pixel_map, captum_map(lambda z: model(z)[:, 3], image, (4, 6), (2, 3)), atol=1e-5)
    mar = occlens.explain(model, image, target=targets.margin(1, 4), patch=(4, 6), stride=(2, 3))

    def s(z):
        lp = torch.log_softmax(model(z).double(), 1)
        return lp[:, 1] - lp[:, 4]

    np.testing.assert_allclose(mar.pixel_map, captum_map(s, image, (4, 6), (2, 3)), atol=1e-6)


class Linear(torch.nn.Module):
    """Two regression outputs: ``y_0 = 2 * sum(x[0])``, ``y_1 = -sum(x[1, :5])``."""

    def forward(self, x):
        return torch.stack([2 * x[:, 0].sum((1, 2)), -x[:, 1, :5].sum((1, 2))], dim=1)


def test_a_regression_is_exact(image):
    got = occlens.explain(Linear().eval(), image, target="regression:0", patch=(4, 5), engine="dense")
    want = np.array([2 * float((0.5 - image[0, r0:r1, c0:c1].double()).sum()) for (r0, r1), (c0, c1) in
                     windows(got.grid)]).reshape(got.grid.rows, got.grid.cols)  # fmt: skip
    np.testing.assert_allclose(got.delta, want, atol=1e-4)  # δL = y_occl - y, in the model's units (float32 sums)
    assert got.loss == pytest.approx(-2 * float(image[0].double().sum()), rel=1e-6)
    assert got.target == "regression:0" and got.target_kind == "regression" and got.sub_targets == ("output 0",)
    second = occlens.explain(Linear().eval(), image, target=targets.regression(1), patch=(4, 5))
    assert (second.delta[2:] == 0).all()  # rows 8 on: y_1 reads rows 0..4 only


def test_a_margin_is_exactly_q_minus_k_from_the_same_passes(image):
    model = Classifier().eval()
    got = occlens.explain(model, image, label=4, target=targets.margin(1), patch=(4, 5), batch_size=8)
    q, k = (occlens.explain(model, image, target=c, patch=(4, 5), batch_size=8) for c in (1, 4))
    np.testing.assert_allclose(got.delta, q.delta - k.delta, atol=1e-12)
    assert got.loss == pytest.approx(q.loss - k.loss, abs=1e-12)
    assert got.target == "margin:1" and got.target_kind == "margin" and got.sub_targets == ("1 vs 4",)
    np.testing.assert_array_equal(got.label_map.delta, k.delta)  # K's map beside it, the same passes
    assert got.predicted == q.predicted and got.correct == (got.predicted == 4)  # a classifier keeps Q and K
    default = occlens.explain(model, image, label=4, target="margin", patch=(4, 5), batch_size=8)
    own = occlens.explain(model, image, target=got.predicted, patch=(4, 5), batch_size=8)
    np.testing.assert_allclose(default.delta, own.delta - k.delta, atol=1e-12)  # defaults: Q and the label


def scores_0_and_2(output):
    """A function target of two columns: the model's scores 0 and 2."""
    return output[:, [0, 2]]


def test_a_function_of_the_output_and_workers(image):
    model = Classifier().eval()
    got = occlens.explain(model, image, target=scores_0_and_2, patch=(6, 6))
    assert got.target_kind == "callable" and got.sub_targets == (f"{__name__}.scores_0_and_2[0]",
                                                                  f"{__name__}.scores_0_and_2[1]")  # fmt: skip
    for t, j in enumerate((0, 2)):
        np.testing.assert_allclose(got.deltas[t], occlens.explain(model, image, target=Regression(j),
                                                                  patch=(6, 6)).delta, atol=1e-12)  # fmt: skip
    portable(Function(scores_0_and_2))  # importable by name: fine for workers
    with pytest.raises(occlens.ConfigError, match="cannot go to worker processes or Ray, which need it importable"):
        portable(Function(lambda out: out[:, 0]))
    with pytest.raises(occlens.ModelError, match=r"gave shape \(1, 2, 1\)"):
        occlens.explain(model, image, target=lambda out: out[:, :2, None], patch=(6, 6))


def test_the_spellings():
    assert parse_target("segment") == Segment() and parse_target("segment:person") == Segment("person")
    assert parse_target("segment:15") == Segment(15)
    assert parse_target("segment:person:10,20,50,80") == Segment("person", (10, 20, 50, 80))
    assert parse_target("regression") == Regression(0) and parse_target("regression:3") == Regression(3)
    assert parse_target("margin:tabby,tiger cat") == Margin("tabby", "tiger cat")
    assert parse_target("margin") == Margin() and parse_target("margin:,7") == Margin(None, 7)
    for t in (Segment(), Segment("person", (1, 2, 3, 4)), Regression(2), Margin("a", "b"), Margin(None, 3)):
        assert parse_target(t.spec()) == t  # the spelling reads back
    for text, words in [
        ("regression:x", "write regression:INDEX"),
        ("margin:a,b,c", "write margin:Q,K"),
        ("segment:cat:1,2", "a box: four numbers"),
        ("segment:cat:", "segment:CLASS:X0,Y0,X1,Y1"),
    ]:
        with pytest.raises(occlens.ConfigError, match=words):
            parse_target(text)  # fmt: skip


def test_bad_targets_are_one_line(image):
    classifier, segmenter = Classifier().eval(), LocalSums().eval()
    for model, target, words in [
        (classifier, "segment", r"target segment needs per-pixel class scores .*returned a tensor of shape \(1, 5\)"),
        (segmenter, "margin:0,1", r"target margin needs class scores .*returned a tensor of shape \(1, 4, 18, 22\)"),
        (segmenter, 2, r"needs class scores .*explain a segment of it: target='segment'"),
        (segmenter, "segment:7", "target segment's class 7 is out of range: the model has 4 classes"),
        (segmenter, targets.segment(0, (0, 0, 30, 5)), "region .* is outside the image, which is 22 wide and 18 high"),
        (classifier, "regression:5", r"regression:5 is out of range: .*\(1, 5\), 5 output\(s\) per image"),
        (classifier, "margin", "margin needs the class k"),
        (classifier, "margin:2,2", "compares a class with itself"),
    ]:
        with pytest.raises(occlens.ConfigError, match=words) as err:
            occlens.explain(model, image, target=target, patch=6)
        assert "\n" not in str(err.value)
    with pytest.raises(occlens.ConfigError, match=r"target region \(5, 5, 5, 9\) is empty: a box is"):
        targets.segment(0, (5, 5, 5, 9))
    with pytest.raises(occlens.ConfigError, match="no pixel of the clean image is predicted"):
        absent = next(c for c in range(4) if c not in log_softmax(local_sums(image.numpy())).argmax(0))
        occlens.explain(segmenter, image, target=targets.segment(absent), patch=6)
    with pytest.raises(occlens.ConfigError, match=r"label 1 is a class, but the model returned a tensor of shape"):
        occlens.explain(segmenter, image, label=1, patch=6)


def test_a_segment_result_saves_and_loads(image, tmp_path):
    got = occlens.explain(LocalSums().eval(), image, target="segment", patch=5)
    for compact in (False, True):
        got.save(tmp_path / "r", compact=compact)
        data = json.loads((tmp_path / "r.json").read_text())
        assert data["format_version"] == 3 and data["form"] == ("compact" if compact else "full")
        assert data["target_kind"] == "segment" and [t["name"] for t in data["targets"]] == list(got.sub_targets)
        assert data["predicted"] is None and data["top_k"] == [] and data["probability"] is None
        with np.load(tmp_path / "r.npz") as z:
            assert z["targets_delta"].shape == got.deltas.shape and "probabilities" not in z.files
            assert z["target_regions"].shape == (len(got.sub_targets), 18, 22)
        back = OcclusionResult.load(tmp_path / "r")
        assert back.sub_targets == got.sub_targets and back.target_kind == "segment" and back.predicted is None
        assert back.target_info == got.target_info
        np.testing.assert_allclose(back.deltas, got.deltas, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(back.pixel_maps, got.pixel_maps, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(back.target_arrays["segmentation"], got.target_arrays["segmentation"])


def test_files_of_format_1_and_2_still_load(tmp_path):
    """Written here as occlens wrote them before version 3 (the JSON and npz spelled out, not by today's code)."""
    settings = occlens.Settings(patch=2).to_dict()
    delta = np.array([[-0.5, 0.25], [0.0, 1.0]])
    common = {"format": "occlens-result", "predicted": 1, "label": 0, "correct": False, "target": 1,
              "probability": 0.7, "loss": 0.35, "top_k": [[1, 0.7], [0, 0.3]], "sign": "...",
              "grid": {"height": 4, "width": 4, "rows": 2, "cols": 2, "patch": [2, 2], "stride": [2, 2]},
              "settings": settings, "device": "cpu", "batch_size": 4, "engine": "dense", "seconds": 0.1,
              "meta": {}}  # fmt: skip
    full = {**common, "format_version": 1, "occluded_loss": (0.35 - delta).tolist(), "delta": delta.tolist(),
            "label_map": {"class": 0, "loss": 1.2, "occluded_loss": (1.2 + delta).tolist(),
                          "delta": (-delta).tolist()}}  # fmt: skip
    compact = {**common, "format_version": 2, "delta": delta.tolist(),
               "label_map": {"class": 0, "loss": 1.2, "delta": (-delta).tolist()}}  # fmt: skip
    pixels = np.kron(delta, np.ones((2, 2)))
    for name, js, arrays in [
        ("full", full, {"probabilities": np.array([0.3, 0.7]), "occluded_loss": 0.35 - delta, "delta": delta,
                        "pixel_map": pixels, "label_occluded_loss": 1.2 + delta, "label_delta": -delta,
                        "label_pixel_map": -pixels}),
        ("compact", compact, {"probabilities": np.array([0.3, 0.7], np.float32), "delta": delta.astype(np.float32),
                              "label_delta": -delta.astype(np.float32)}),
    ]:  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(js))
        with open(tmp_path / f"{name}.npz", "wb") as f:
            write_npz(f, arrays)
        assert zipfile.is_zipfile(tmp_path / f"{name}.npz")
        r = OcclusionResult.load(tmp_path / name)
        assert (r.predicted, r.label, r.target, r.correct, r.target_kind) == (1, 0, 1, False, "class")
        assert r.sub_targets == ("1",) and r.deltas.shape == (1, 2, 2) and r.top_k(1) == [(1, pytest.approx(0.7))]
        np.testing.assert_allclose(r.delta, delta)
        np.testing.assert_allclose(r.pixel_map, pixels)
        np.testing.assert_allclose(r.label_map.delta, -delta)
        np.testing.assert_allclose(r.occluded_loss, 0.35 - delta)


def test_the_figures_say_what_is_explained(image):
    seg = occlens.explain(LocalSums().eval(), image, target="segment", patch=6)
    fig = seg.plot()
    assert len(fig.axes) >= 3 * len(seg.sub_targets)  # a row per sub-target (and colour bars)
    words = fig._suptitle.get_text()
    assert "segment target segment" in words and "mean log P(" in words and "over its region" in words
    assert fig.axes[0].get_title().startswith("segment (clean mask, region outlined)")
    mar = occlens.explain(Classifier().eval(), image, target="margin:1,4", patch=6)
    assert "s = log P(1) − log P(4)" in mar.plot()._suptitle.get_text()
    reg = occlens.explain(Classifier().eval(), image, target="regression:2", patch=6)
    assert "s = y_2" in reg.plot()._suptitle.get_text()


def test_the_command_and_a_run_spell_targets(tmp_path, capsys):
    from test_runs import colour_image, make_model

    from occlens.cli import main

    model_path = make_model(tmp_path / "model")
    colour_image(2, 5).save(tmp_path / "img.png")
    base = ["explain", str(tmp_path / "img.png"), "--model", str(model_path), "--patch", "8"]
    assert main([*base, "--target", "regression:9", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("regression:9 is out of range" in line and "output(s) per image" in line for line in err), err
    assert not (tmp_path / "bad" / "img.json").exists()
    assert main([*base, "--target", "segment", "--out", str(tmp_path / "bad2")]) == 2
    assert "segment needs per-pixel class scores" in capsys.readouterr().err
    assert main([*base, "--target", "margin:1,2", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "out" / "img.json").read_text())
    assert saved["target"] == "margin:1,2" and saved["target_kind"] == "margin" and len(saved["targets"]) == 1
    loaded = occlens.load_model(str(model_path))
    alone = occlens.explain(loaded, tmp_path / "img.png", target=targets.margin(1, 2), patch=8)
    np.testing.assert_allclose(np.array(saved["targets"][0]["delta"]), alone.delta, atol=1e-12)
    # occlens run: a CSV's target column spells a target per image
    (tmp_path / "data").mkdir()
    for i in range(3):
        colour_image(i, i).save(tmp_path / "data" / f"{i}.png")
    rows = ["path,label,target", "0.png,,regression:1", '1.png,,"margin:0,2"', "2.png,,"]
    (tmp_path / "data" / "list.csv").write_text("\n".join(rows) + "\n")
    report = occlens.run(tmp_path / "data" / "list.csv", tmp_path / "run", loaded, patch=8, workers=0)
    assert report.summary.explained == 3 and not report.summary.failed
    got = {k: json.loads((tmp_path / "run" / "images" / f"{k}.json").read_text()) for k in "012"}
    assert [got[k]["target"] for k in "012"] == ["regression:1", "margin:0,2", got["2"]["predicted"]]


def test_the_server_refuses_a_target_that_does_not_fit_with_a_400(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("multipart")
    from test_serve import Server, one_line_error, photo, tiny_model_file

    from occlens.serve import Viewer

    model = occlens.load_model(str(tiny_model_file(tmp_path)), device="cpu")
    server = Server(Viewer(model, occlens.Settings(patch=16)))
    try:
        status, answer = server.post("/api/explain", {"target": "segment"}, photo())
        one_line_error(status, answer, 400, "segment needs per-pixel class scores")
        status, answer = server.post("/api/explain", {"target": "regression:99"}, photo())
        one_line_error(status, answer, 400, "regression:99 is out of range")
        status, answer = server.post("/api/explain", {"target": "margin:0,1"}, photo())
        assert status == 200, answer
    finally:
        server.close()


def test_images_sharing_batches_and_the_approximate_modes_keep_every_sub_target():
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(3, 18, 22, generator=g), torch.rand(3, 18, 22, generator=g)
    model = LocalSums().eval()
    both = occlens.explain(model, [a, b], target="segment", patch=4, engine="dense")  # windows of both in batches
    for got, x in zip(both, (a, b), strict=True):
        alone = occlens.explain(model, x, target="segment", patch=4, engine="dense")
        assert got.sub_targets == alone.sub_targets
        np.testing.assert_allclose(got.deltas, alone.deltas, atol=1e-12)
    exact = occlens.explain(model, a, target="segment", patch=2)
    anytime = occlens.explain(model, a, target="segment", patch=2, budget=600)  # time for every window: exact
    assert anytime.meta["anytime"]["complete"] and anytime.deltas.shape == exact.deltas.shape
    np.testing.assert_allclose(anytime.deltas, exact.deltas, atol=1e-6)  # other batches: float32 rounding
    fast = occlens.explain(model, a, target="segment", patch=2, fast=True)
    assert fast.engine.startswith("drilldown+") and fast.sub_targets == exact.sub_targets


def test_a_run_with_workers_refuses_a_lambda_in_one_line_and_leaves_nothing(tmp_path):
    from test_runs import colour_image, make_model

    loaded = occlens.load_model(str(make_model(tmp_path / "model")))
    (tmp_path / "data").mkdir()
    for i in range(8):
        colour_image(i % 3, i).save(tmp_path / "data" / f"{i}.png")
    with pytest.raises(occlens.ConfigError, match="cannot go to worker processes or Ray") as err:
        occlens.run(tmp_path / "data", tmp_path / "run", loaded, target=lambda out: out[:, 0], patch=8, workers=1)
    assert "\n" not in str(err.value)
    assert not any(p.is_file() for p in (tmp_path / "run").rglob("*")) if (tmp_path / "run").exists() else True


def test_a_segmenter_run_says_what_its_maps_speak_of(tmp_path):
    """A run without a target explains a segmenter's default (every predicted segment): the line under its
    table says so, not "the prediction"; a classifier's run still says "the prediction"."""
    from test_runs import colour_image

    (tmp_path / "data").mkdir()
    for i in range(2):
        colour_image(i, i + 1).convert("RGB").resize((20, 16)).save(tmp_path / "data" / f"{i}.png")
    preprocess = Preprocess((16, 20), None, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    model = occlens.load_model(LocalSums().eval(), preprocess=preprocess)
    report = occlens.run(tmp_path / "data", tmp_path / "run", model, patch=4, workers=0, progress=False)
    assert not report.summary.failed and report.explained.startswith("each predicted segment"), report.explained
    assert json.loads((tmp_path / "run" / "images" / "0.json").read_text())["target_kind"] == "segment"
