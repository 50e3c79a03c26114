"""Box targets (occlens.targets.box): a detector's boxes explained.

A detector whose box scores are closed-form functions of the pixels in each box gives exact maps; IoU matching
is checked on fixed detections; one set of forward passes serves every box (counted); a real random-weight
torchvision detector runs end to end without touching the network; bad input is one line (exit 2, 400).
"""

from __future__ import annotations

import json
import socket
import warnings

import matplotlib.patches
import numpy as np
import pytest
import torch
from conftest import Recorder
from PIL import Image

import occlens
from occlens.core.result import OcclusionResult
from occlens.core.targets import EPSILON, BoxTarget, iou, parse_target
from occlens.models.preprocess import Preprocess

targets = occlens.targets
SLOPE, CENTRE = 6.0, 0.45


class ClosedForm(torch.nn.Module):
    """A detector of fixed boxes whose score is ``sigmoid(SLOPE * (mean of the box's pixels - CENTRE))``;
    ``listed``: torchvision's list of dicts, else an N x D x (4 + 1 + classes) tensor (one-hot classes);
    ``drop``: scores below it are dropped (as a detector's own threshold does)."""

    BOXES = ((2, 2, 14, 12, 1), (6, 4, 18, 14, 1), (10, 8, 22, 18, 2))  # x0, y0, x1, y1, class
    CLASSES = 3

    def __init__(self, listed: bool = True, drop: float = 0.0):
        super().__init__()
        self.listed, self.drop = listed, drop

    def forward(self, x):
        scores = torch.stack([torch.sigmoid(SLOPE * (x[:, :, y0:y1, x0:x1].mean((1, 2, 3)) - CENTRE))
                              for x0, y0, x1, y1, _ in self.BOXES], 1)  # fmt: skip
        scores = torch.where(scores >= self.drop, scores, torch.zeros_like(scores))
        boxes = torch.tensor([b[:4] for b in self.BOXES], dtype=x.dtype)
        labels = torch.tensor([b[4] for b in self.BOXES])
        if self.listed:
            return [{"boxes": boxes[s > 0], "labels": labels[s > 0], "scores": s[s > 0]} for s in scores]
        onehot = torch.nn.functional.one_hot(labels, self.CLASSES).to(x.dtype)
        n = x.shape[0]
        return torch.cat([boxes.expand(n, -1, -1), scores[:, :, None], onehot.expand(n, -1, -1)], 2)


def iou_by_hand(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def box_scores_by_hand(x: np.ndarray, drop: float = 0.0) -> list[float]:
    out = []
    for x0, y0, x1, y1, _ in ClosedForm.BOXES:
        s = 1 / (1 + np.exp(-SLOPE * (x[:, y0:y1, x0:x1].astype(np.float64).mean() - CENTRE)))
        out.append(s if s >= drop else 0.0)
    return out


def s_by_hand(x: np.ndarray, ref, cls: int) -> float:
    """log max(ε, max_d IoU(ref, d) · score_d) over the detections d of class cls."""
    best = max([iou_by_hand(ref, b[:4]) * s for b, s in zip(ClosedForm.BOXES, box_scores_by_hand(x), strict=True)
                if b[4] == cls] + [0.0])  # fmt: skip
    return float(np.log(max(EPSILON, best)))


def map_by_hand(x: np.ndarray, grid, ref, cls: int, fill: float = 0.5) -> np.ndarray:
    clean, out = s_by_hand(x, ref, cls), []
    for r0, r1 in zip(*grid.row_spans(), strict=True):
        for c0, c1 in zip(*grid.col_spans(), strict=True):
            y = x.copy()
            y[:, r0:r1, c0:c1] = fill
            out.append(s_by_hand(y, ref, cls) - clean)  # δL = s_occl - s
    return np.array(out).reshape(grid.rows, grid.cols)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("listed", [True, False])
def test_every_clean_box_of_a_closed_form_detector_is_exact(image, listed):
    x = image.numpy()
    got = occlens.explain(ClosedForm(listed).eval(), image, target=targets.box(min_score=0.0), patch=(4, 5),
                          stride=(3, 4))  # fmt: skip
    clean = box_scores_by_hand(x)
    order = np.argsort([-s for s in clean], kind="stable")  # the boxes, best first
    assert got.target_kind == "box" and got.target == "box:@0" and got.engine == "dense"
    assert got.deltas.shape == (3, got.grid.rows, got.grid.cols) and got.predicted is None
    for t, d in enumerate(order):
        ref, cls = ClosedForm.BOXES[d][:4], ClosedForm.BOXES[d][4]
        info = got.target_info[t]
        assert info["class"] == cls and info["box"] == list(map(float, ref))
        assert info["clean_score"] == pytest.approx(clean[d], abs=1e-6)
        np.testing.assert_allclose(got.deltas[t], map_by_hand(x, got.grid, ref, cls), atol=2e-5)
        assert got.target_maps[t].loss == pytest.approx(-s_by_hand(x, ref, cls), abs=1e-5)  # L = -s
    np.testing.assert_array_equal(got.target_arrays["boxes"], np.array([ClosedForm.BOXES[d][:4] for d in order]))


@pytest.mark.filterwarnings("ignore:.*no detection matching the box")
def test_a_given_box_matches_by_iou_within_its_class(image):
    x = image.numpy()
    model = ClosedForm().eval()
    for ref, cls in [((4, 3, 16, 13), 1), ((4, 3, 16, 13), 2), ((10, 8, 22, 18), None), ((0, 0, 3, 3), 2)]:
        got = occlens.explain(model, image, target=targets.box(ref, cls), patch=4)
        want_cls = 2 if cls is None else cls  # None: the class of the clean detection matching it best
        assert got.target_info[0]["class"] == want_cls
        np.testing.assert_allclose(got.delta, map_by_hand(x, got.grid, ref, want_cls), atol=2e-5)
        assert got.loss == pytest.approx(-s_by_hand(x, ref, want_cls), abs=1e-5)
    far = occlens.explain(model, image, target=targets.box((0, 0, 2, 2), 1), patch=4)  # overlaps nothing: ε
    assert far.loss == pytest.approx(-np.log(EPSILON)) and not far.delta.any()
    a = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float64)
    np.testing.assert_allclose(iou(a, a).numpy(), [[1, 1 / 3], [1 / 3, 1]])


def test_a_box_goes_through_the_preprocessing():
    model = occlens.load_model(ClosedForm().eval(), preprocess=Preprocess(
        size=(20, 24), resize=24, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)))  # fmt: skip
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 60, 3), dtype=np.uint8))
    # the photo 48 x 60 is resized to 24 x 30 (scale 1/2), then cropped to 20 x 24: x 6..54, y 4..44 in the photo
    got = occlens.explain(model, photo, target=targets.box((16, 8, 40, 28), 1), patch=4)
    assert got.target_info[0]["box"] == [5.0, 2.0, 17.0, 12.0]
    with pytest.raises(occlens.ConfigError, match=r"box \(0.0, 0.0, 5.0, 30.0\) lies outside the part of the image "
                       r"the model sees .*x 6..54") as err:  # fmt: skip
        occlens.explain(model, photo, target=targets.box((0, 0, 5, 30), 1), patch=4)
    assert "\n" not in str(err.value)


def test_one_set_of_forward_passes_for_every_box(image):
    one, many = Recorder(ClosedForm()), Recorder(ClosedForm())
    a = occlens.explain(one, image, target=targets.box((2, 2, 14, 12), 1), patch=2, batch_size=16)
    b = occlens.explain(many, image, target=targets.box(min_score=0.0), patch=2, batch_size=16)
    assert len(b.sub_targets) == 3 and len(one.batches) == len(many.batches) == 1 + -(-a.windows // 16)
    first = b.target_info.index(next(i for i in b.target_info if i["box"] == [2.0, 2.0, 14.0, 12.0]))
    np.testing.assert_allclose(b.deltas[first], a.delta, atol=1e-12)


def test_a_map_of_windows_at_the_floor_says_so(image):
    model = ClosedForm(drop=0.93).eval()  # the detector drops what scores below 0.93, as torchvision's do
    x = torch.full_like(image, 0.9)  # every box scores sigmoid(6 * 0.45) = 0.937; a window on one drops it
    with pytest.warns(UserWarning, match=r"40% of the occluded copies have no detection matching the box"):
        got = occlens.explain(model, x, target=targets.box((10, 8, 22, 18), 2), patch=4, fill=0.0)
    floor = np.isclose(got.occluded_losses[0], -np.log(EPSILON), rtol=0, atol=1e-9)
    assert floor.sum() == 12 and floor[2:5, 2:6].all()  # the 3 x 4 windows on the box


def test_the_spellings_of_a_box():
    for text, want in [
        ("box", BoxTarget()),
        ("box:10,20,50,80", BoxTarget((10, 20, 50, 80))),
        ("box:10,20,50,80:car", BoxTarget((10, 20, 50, 80), "car")),
        ("box:10,20,50,80:3", BoxTarget((10, 20, 50, 80), 3)),
        ("box:@0.1", BoxTarget(min_score=0.1)),
        ("box::car", BoxTarget(cls="car")),
    ]:
        assert parse_target(text) == want and parse_target(want.spec()) == want
    for text, words in [("box:1,2,3", "write box, box:X0,Y0,X1,Y1"), ("box:a,b,c,d", "write box"),
                        ("box:5,5,5,9", "is empty"), ("box:@2", "min_score must be a number in")]:  # fmt: skip
        with pytest.raises(occlens.ConfigError, match=words):
            parse_target(text)


class Classifier(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)) @ torch.ones(3, 5)


class Segmenter(torch.nn.Module):
    def forward(self, x):
        return {"out": torch.cat([x, 1 - x[:, :1]], 1)}


def test_bad_boxes_are_one_line(image):
    detector = ClosedForm().eval()
    for model, target, words in [
        (Segmenter().eval(), "box", r"box needs detections .*a tensor of shape \(1, 4, 20, 24\); explain a segment"),
        (Classifier().eval(), "box:1,1,5,5", r"target box needs detections .*returned a tensor of shape \(1, 5\)"),
        (detector, "box:0,0,30,10", "is outside the image, which is 24 wide and 20 high"),
        (detector, "box", r"no detection on the clean image scores >= 0.5 \(the best scores 0.\d+\); lower min_score"),
        (detector, "box:0,0,2,2", "no detection on the clean image overlaps the box"),
        (ClosedForm(listed=False).eval(), "box:2,2,14,12:7", "class 7 is out of range: the model has 3 classes"),
        (detector, "segment", "target segment needs per-pixel class scores"),
    ]:
        with pytest.raises(occlens.ConfigError, match=words) as err:
            occlens.explain(model, image * 0.5, target=target, patch=6)
        assert "\n" not in str(err.value)


def scripted_detector(folder) -> str:
    """detector.pt (TorchScript of the closed-form detector's tensor output) and detector.json declaring it."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the boxes are constants, as they should be
        traced = torch.jit.trace(ClosedForm(listed=False).eval(), torch.rand(1, 3, 20, 24))
    traced.save(str(folder / "detector.pt"))
    description = {"input_size": [20, 24], "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1],
                   "output": "detections", "labels": ["nothing", "car", "bus"]}  # fmt: skip
    (folder / "detector.json").write_text(json.dumps(description))
    return str(folder / "detector.pt")


def test_the_command_explains_boxes_and_refuses_bad_ones(tmp_path, capsys, image):
    from occlens.cli import main

    path = scripted_detector(tmp_path / "model")
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "img.png")
    base = ["explain", str(tmp_path / "img.png"), "--model", path, "--patch", "4"]
    for target, words in [("box:0,0,99,9", "is outside the image"), ("box:1,1,9,9:truck", "truck"),
                          ("segment", "segment needs per-pixel class scores")]:  # fmt: skip
        assert main([*base, "--target", target, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not (tmp_path / "bad" / "img.json").exists()
    assert main([*base, "--target", "box:2,2,14,12:car", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "out" / "img.json").read_text())
    assert saved["target"] == "box:2,2,14,12:car" and saved["target_kind"] == "box"
    assert saved["targets"][0]["class_name"] == "car" and saved["targets"][0]["box"] == [2, 2, 14, 12]
    alone = occlens.explain(occlens.load_model(path), tmp_path / "img.png", target="box:2,2,14,12:car", patch=4)
    np.testing.assert_allclose(np.array(saved["targets"][0]["delta"]), alone.delta, atol=1e-12)
    default = occlens.explain(occlens.load_model(path), tmp_path / "img.png", patch=4)  # declared: every box
    assert default.target_kind == "box" and default.target == "box"


def test_the_server_refuses_a_bad_box_with_a_400(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("multipart")
    from test_serve import Server, one_line_error, photo

    from occlens.serve import Viewer

    model = occlens.load_model(scripted_detector(tmp_path / "model"), device="cpu")
    server = Server(Viewer(model, occlens.Settings(patch=4)))
    try:
        status, answer = server.post("/api/explain", {"target": "box:0,0,5000,9"}, photo())
        one_line_error(status, answer, 400, "is outside the image")
        status, answer = server.post("/api/explain", {"target": "box:@0.9999"}, photo())
        one_line_error(status, answer, 400, "no detection on the clean image scores >= 0.9999")
    finally:
        server.close()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (a connection raises) and an empty torch hub: whatever downloads fails or leaves a file."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    torch.hub.set_dir(str(hub))

    def refuse(*args, **kwargs):
        raise AssertionError("occlens tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield hub
    torch.hub.set_dir(str(tmp_path / "unused"))
    assert not hub.exists() or not any(hub.rglob("*")), list(hub.rglob("*"))


@pytest.mark.timeout(300)
def test_a_random_torchvision_detector_by_name_end_to_end(offline, tmp_path):
    name = "torchvision:fasterrcnn_mobilenet_v3_large_fpn"
    model = occlens.load_model(name, weights="random", description={"input_size": 64, "resize": 64})
    inner = model.module.model
    assert model.output == "detections" and model.labels[1] == "person" and len(model.labels) == 91
    assert model.preprocess.mean == (0, 0, 0) and model.preprocess.std == (1, 1, 1)  # it normalises inside
    assert inner.roi_heads.score_thresh == 0.001 and inner.transform.min_size == (64,)
    torch.save(inner.state_dict(), tmp_path / "weights.pt")  # a state dict file loads into the same architecture
    again = occlens.load_model(name, weights=tmp_path / "weights.pt", description={"input_size": 64, "resize": 64})
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    got = occlens.explain(again, photo, target=targets.box(min_score=0.0), patch=32, engine="auto")
    assert got.engine == "dense" and got.target_kind == "box" and len(got.sub_targets) >= 1
    assert got.deltas.shape == (len(got.sub_targets), 2, 2) and np.isfinite(got.deltas).all()
    top = got.target_info[0]
    assert top["class_name"] == model.labels[top["class"]]


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:.*no detection matching the box")  # its own threshold drops random scores
def test_a_users_own_detector_is_never_changed(offline):
    import torchvision

    torch.manual_seed(0)
    detector = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None,
                                            min_size=64, max_size=64)  # fmt: skip
    detector.train()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    settings = (detector.roi_heads.score_thresh, detector.transform.min_size, detector.rpn._post_nms_top_n)
    modes = [m.training for m in detector.modules()]
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="training mode"):
        got = occlens.explain(detector, image, target=targets.box((0, 0, 32, 32), 1), patch=32)
    assert got.target_kind == "box"
    assert [m.training for m in detector.modules()] == modes
    assert (detector.roi_heads.score_thresh, detector.transform.min_size, detector.rpn._post_nms_top_n) == settings
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())


def test_the_figure_draws_the_boxes_and_says_what_is_explained(image, tmp_path):
    got = occlens.explain(ClosedForm().eval(), image, target=targets.box(min_score=0.0), patch=4)
    fig = got.plot()
    text = fig._suptitle.get_text()
    assert "box target box:@0" in text and "3 sub-targets" in text and "max IoU · score" in text
    image_axes = fig.axes[0::3][:3]  # the image panel of each row: its box outlined, the others dashed
    for t, ax in enumerate(image_axes):
        outlines = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle) and p.get_fill() is False]
        drawn = [(p.get_x() + 0.5, p.get_y() + 0.5, p.get_width(), p.get_height(), p.get_linestyle()) for p in outlines]
        x0, y0, x1, y1 = got.target_info[t]["box"]
        assert (x0, y0, x1 - x0, y1 - y0, "-") in drawn and len([d for d in drawn if d[4] == "--"]) == 2
        assert ax.get_title().startswith("box (outlined)")
    got.save(tmp_path / "r")
    back = OcclusionResult.load(tmp_path / "r")
    assert back.target_kind == "box" and back.sub_targets == got.sub_targets
    np.testing.assert_array_equal(back.target_arrays["boxes"], got.target_arrays["boxes"])
    np.testing.assert_array_equal(back.deltas, got.deltas)


def test_the_sign_words_name_what_a_default_target_explains():
    from occlens.app.summary import explained_words, sign_note

    assert sign_note(explained_words(None, None)) == "(δL < 0: the window supported the prediction)"
    assert "each predicted segment" in explained_words(None, None, "segment")
    assert explained_words(None, None, "box") == "each detected box (its IoU · score)"
    assert explained_words(None, ["a", "b"], "class") == "the prediction"
    assert explained_words(BoxTarget((1, 2, 3, 4), "car"), None, "box") == "the explained target box:1,2,3,4:car"


def test_occlens_targets_is_a_module_to_import_from():
    import importlib

    import occlens.core.targets as core
    from occlens.targets import box, segment

    module = importlib.import_module("occlens.targets")
    assert occlens.targets is module and box is core.box and segment is core.segment
    assert all(getattr(module, name) is getattr(core, name) for name in module.__all__)


def test_a_declared_regression_and_a_one_output_classifier():
    class One(torch.nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3))[:, None] * 4 - 2  # one number per image

    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    pre = Preprocess(size=(8, 8), resize=None, interpolation="bilinear", mean=(0, 0, 0),
                                    std=(1, 1, 1))  # fmt: skip
    binary = occlens.explain(occlens.load_model(One().eval(), preprocess=pre), image, patch=4)
    assert binary.target_kind == "class" and len(binary.probabilities) == 2  # one output: a binary classifier
    declared = occlens.load_model(One().eval(), preprocess=pre, description={"output": "regression"})
    got = occlens.explain(declared, image, patch=4)
    assert got.target_kind == "regression" and got.predicted is None and got.probabilities is None
    x = image.double().numpy()
    for i, ((r0, r1), (c0, c1)) in enumerate((r, c) for r in ((0, 4), (4, 8)) for c in ((0, 4), (4, 8))):
        y = x.copy()
        y[:, r0:r1, c0:c1] = 0.5
        assert got.delta.ravel()[i] == pytest.approx(4 * (y.mean() - x.mean()), abs=1e-5)  # y_occl - y
    assert got.loss == pytest.approx(-(4 * x.mean() - 2), abs=1e-5)
    with pytest.raises(occlens.ConfigError, match="margin needs class scores"):
        occlens.explain(declared, image, target="margin:0,1", patch=4)


def test_images_sharing_batches_slice_a_detectors_list_per_image():
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(3, 20, 24, generator=g), torch.rand(3, 20, 24, generator=g)
    model = Recorder(ClosedForm())
    target = targets.box((2, 2, 14, 12), 1)
    both = occlens.explain(model, [a, b], target=target, patch=(4, 6), batch_size=7, engine="dense")
    assert len(model.batches) == 2 + -(-2 * both[0].windows // 7)  # two clean passes, then batches holding both images
    for got, x in zip(both, (a, b), strict=True):
        alone = occlens.explain(ClosedForm().eval(), x, target=target, patch=(4, 6), engine="dense")
        np.testing.assert_allclose(got.deltas, alone.deltas, atol=1e-12)
        np.testing.assert_allclose(got.delta, map_by_hand(x.numpy(), got.grid, (2, 2, 14, 12), 1), atol=2e-5)
