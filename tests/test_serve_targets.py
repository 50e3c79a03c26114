"""``occlens serve`` draws targets beyond a class: a segmenter's segments and a detector's boxes (one map per
sub-target, named, the segment's region outlined or the reference box drawn over the image), a classifier's
margin and regression outputs, each said in words; a bad target is one line on the page.

The models are the analytic ones of test_tasks.py (a segmenter whose logits are local sums) and test_boxes.py
(a detector of fixed boxes whose scores are closed-form), on a real uvicorn server on a loopback port; the page
runs in Debian's Chromium (Playwright). Every map the page holds and every colour it draws is compared with
``occlens.explain``'s maps, every outline and box with the result's regions and boxes.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from conftest import chromium, needs_chromium
from PIL import Image
from test_boxes import scripted_detector
from test_serve import NAMES, Server, one_line_error, tiny_model_file, viewer_page
from test_tasks import LocalSums

import occlens
from occlens.models.preprocess import Preprocess
from occlens.present.colours import colour_table
from occlens.present.figure import score_words
from occlens.present.report.data import outline

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import Viewer  # noqa: E402

SIZE = (20, 24)  # the analytic models' input: rows, columns
SEGMENTS = ["background", "person", "car", "dog"]
MARK = (0, 229, 255)  # the outline's and the box's colour (#00e5ff)
LUT = colour_table()


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 24 x 20 PNG (the models' input size: nothing is resized) of seeded noise."""
    x = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    path = tmp_path_factory.mktemp("serve-targets") / "noise.png"
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def segmenter():
    preprocess = Preprocess(SIZE, None, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return occlens.load_model(LocalSums().eval(), preprocess=preprocess, description={"labels": SEGMENTS})


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return occlens.load_model(scripted_detector(tmp_path_factory.mktemp("detector")), device="cpu")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return occlens.load_model(str(tiny_model_file(tmp_path_factory.mktemp("classifier"))), device="cpu")


@pytest.fixture(scope="module")
def servers(segmenter, detector, classifier):
    started = {
        "segmenter": Server(Viewer(segmenter, occlens.Settings(patch=4))),
        "detector": Server(Viewer(detector, occlens.Settings(patch=4))),
        "classifier": Server(Viewer(classifier, occlens.Settings(patch=8))),
    }
    yield started
    for s in started.values():
        s.close()


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def events(data: bytes) -> list[tuple[str, dict]]:
    return [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in data.decode().strip().split("\n\n")]


def colour_indices(values: np.ndarray, limit: float) -> np.ndarray:
    """The page's colour of each δL (serve.js ``colour``): index into the figures' 256 colours."""
    t = np.clip((values / limit + 1) / 2, 0, 1)
    return np.minimum(255, np.floor(t * 256)).astype(int)


def drawn_indices(rgb: np.ndarray) -> np.ndarray:
    """Each drawn RGB colour's index in the colour table (the nearest: the table's colours are distinct)."""
    return np.abs(rgb[..., None, :].astype(int) - LUT[None, None].astype(int)).sum(-1).argmin(-1)


def cells(page, selector: str, rows: int, cols: int) -> np.ndarray:
    """The RGB at the centre of each cell of a map canvas (``data-cell`` pixels a side)."""
    got = page.eval_on_selector(selector, """(c) => {
        const k = Number(c.dataset.cell), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, out = [];
        for (let r = 0; r < c.height / k; r++) for (let q = 0; q < c.width / k; q++) {
            const i = 4 * ((r * k + (k >> 1)) * c.width + q * k + (k >> 1)); out.push([d[i], d[i + 1], d[i + 2]]);
        }
        return out; }""")  # fmt: skip
    return np.array(got, dtype=np.uint8).reshape(rows, cols, 3)


PIXELS = "(c) => [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]"


def canvas_rgba(page, selector: str) -> np.ndarray:
    """A canvas's pixels, H x W x 4."""
    w, h, data = page.eval_on_selector(selector, PIXELS)
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def marked(page, selector: str) -> tuple[np.ndarray, int]:
    """Where a canvas is drawn in the mark's colour (True), and its pixels per image pixel."""
    rgba = canvas_rgba(page, selector)
    return (rgba[..., :3] == MARK).all(-1), rgba.shape[1] // SIZE[1]


def border(region: np.ndarray) -> np.ndarray:
    """A region's border pixels, as the report encodes them (occlens.present.report.data.outline), unpacked."""
    o = outline(region)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(o["bits"]), np.uint8))[: o["h"] * o["w"]]
    return bits.reshape(o["h"], o["w"]).astype(bool)


def explained(page, picture, target: str = "") -> None:
    """``picture`` explained for ``target`` (empty: the model's default): chosen the first time, then again
    with Enter in the target's field."""
    page.fill("#target", target)
    if page.evaluate("window.occlensView.image === null"):
        page.set_input_files("#file", str(picture))
    else:
        page.press("#target", "Enter")
    if target:
        page.wait_for_function(f"window.occlensView.exact && window.occlensView.exact.target === {target!r}",
                               timeout=60_000)  # fmt: skip
    else:
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)


def check_maps(page, expected, labels) -> None:
    """The page holds every sub-target's map, draws each in the small multiples in the figures' colours on one
    scale, and says per sub-target what s is, as the figure does."""
    maps = expected.target_maps
    g = expected.grid
    held = page.evaluate("window.occlensView.exact.targets.map((t) => t.delta)")
    assert len(held) == len(maps)
    for got, m in zip(held, maps, strict=True):
        np.testing.assert_allclose(np.array(got), m.delta, rtol=0, atol=1e-6)
    assert page.locator("#subtargets .sub").count() == len(maps)
    limit = max(float(np.abs(m.delta).max()) for m in maps)
    for i, m in enumerate(maps):
        drawn = drawn_indices(cells(page, f"#subtargets .sub[data-index='{i}'] canvas", g.rows, g.cols))
        assert np.abs(drawn - colour_indices(m.delta, limit)).max() <= 1  # δL within 1e-6: at most a level off
    rows = page.locator("#explained-table tbody tr").all()
    assert len(rows) == len(maps)
    for row, m in zip(rows, maps, strict=True):
        words = row.locator("td").all_text_contents()
        assert words[3] == "s = " + score_words(expected, m, labels)
        assert float(words[2]) == pytest.approx(m.loss, abs=1e-4)


def check_picked(page, expected, i: int) -> None:
    """Sub-target ``i``'s map is the one drawn large (the R x C map, its colours) and named in the captions."""
    g, m = expected.grid, expected.target_maps[i]
    assert page.evaluate("window.occlensView.picked") == i
    limit = max(float(np.abs(t.delta).max()) for t in expected.target_maps)
    drawn = drawn_indices(cells(page, "#map", g.rows, g.cols))
    assert np.abs(drawn - colour_indices(m.delta, limit)).max() <= 1
    role = page.evaluate(f"window.occlensView.targets.targets[{i}].role")
    assert role in page.text_content("#map-caption") and role in page.text_content("#explained-words")
    assert f"supported {role}" in page.text_content("#legend-words")


# --------------------------------------------------------------------------------------------------
# the stream tells what each sub-target is, before the first map


def test_the_stream_says_each_segment_and_its_outline_before_the_first_map(servers, segmenter, picture):
    status, data = servers["segmenter"].post("/api/explain/stream", {}, {"image": ("noise.png", picture.read_bytes())})
    assert status == 200
    got = events(data)
    kinds = [k for k, _ in got]
    assert kinds.index("targets") < kinds.index("coarse") < kinds.index("exact") and kinds.count("targets") == 1
    told, exact = dict(got)["targets"], dict(got)["exact"]
    expected = occlens.explain(segmenter, picture, patch=4)
    assert told["kind"] == "segment" and [t["name"] for t in told["targets"]] == list(expected.sub_targets)
    regions = expected.target_arrays["regions"]
    for t, region, m in zip(told["targets"], regions, expected.target_maps, strict=True):
        assert t["outline"] == outline(region) and t["role"] == f"segment {str(m.cls)!r}"
        assert t["words"] == "s = " + score_words(expected, m, segmenter.labels)
    for t, m in zip(exact["targets"], expected.target_maps, strict=True):
        np.testing.assert_allclose(t["delta"], m.delta, rtol=0, atol=1e-6)


def test_the_stream_says_each_box_in_the_model_input_s_pixels(servers, detector, picture):
    body = {"image": ("noise.png", picture.read_bytes())}
    status, data = servers["detector"].post("/api/explain/stream", {"target": "box:2,2,14,12:car"}, body)
    assert status == 200
    told = dict(events(data))["targets"]
    assert told["kind"] == "box" and len(told["targets"]) == 1
    assert told["targets"][0]["box"] == [2.0, 2.0, 14.0, 12.0] and told["targets"][0]["role"].startswith("box car")
    status, data = servers["classifier"].post("/api/explain/stream", {}, {"image": ("noise.png", picture.read_bytes())})
    assert status == 200 and "targets" not in dict(events(data))  # a class: nothing more to draw


# --------------------------------------------------------------------------------------------------
# the page


@needs_chromium
def test_the_page_draws_every_segment_s_map_with_its_region_outlined(servers, segmenter, picture, browser):
    expected = occlens.explain(segmenter, picture, patch=4)
    assert len(expected.target_maps) >= 2  # the noise is predicted as two classes at least: a choice to make
    with viewer_page(browser, servers["segmenter"].url) as page:
        page.wait_for_function("window.occlensView.health !== null")
        explained(page, picture)
        assert page.locator("#error").is_hidden()
        check_maps(page, expected, segmenter.labels)
        assert "no predicted class Q" in page.text_content("#verdict")
        assert f"{len(expected.target_maps)} segment sub-targets" in page.text_content("#verdict")
        regions = expected.target_arrays["regions"]
        for i in range(len(expected.target_maps)):
            if i:
                page.click(f"#subtargets .sub[data-index='{i}']")
                page.wait_for_function(f"window.occlensView.picked === {i}")
            check_picked(page, expected, i)
            for canvas in ("#view", "#pixels"):
                assert page.get_attribute(canvas, "data-mark") == "outline"
                drawn, scale = marked(page, canvas)
                want = np.kron(border(regions[i]), np.ones((scale, scale), bool))
                np.testing.assert_array_equal(drawn, want)
        # a click on the image asks for a class's answer: said, nothing sent
        box = page.locator("#view").bounding_box()
        page.mouse.click(box["x"] + 5, box["y"] + 5)
        assert "answers for a class" in page.text_content("#status")
        assert page.locator("#occlusion").is_hidden()


@needs_chromium
def test_the_page_draws_every_box_s_map_with_its_box(servers, detector, picture, browser):
    expected = occlens.explain(detector, picture, patch=4)
    boxes = expected.target_arrays["boxes"]
    assert len(boxes) == 3
    with viewer_page(browser, servers["detector"].url) as page:
        page.wait_for_function("window.occlensView.health !== null")
        explained(page, picture)
        check_maps(page, expected, detector.labels)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=int)):
            if i:
                page.click(f"#explained-table tbody tr:nth-child({i + 1})")  # the answer's rows pick too
                page.wait_for_function(f"window.occlensView.picked === {i}")
            check_picked(page, expected, i)
            assert page.get_attribute("#view", "data-mark") == "box"
            drawn, s = marked(page, "#view")
            want = np.zeros_like(drawn)
            want[y0 * s : y1 * s, x0 * s : x1 * s] = True
            want[y0 * s + 2 : y1 * s - 2, x0 * s + 2 : x1 * s - 2] = False  # a line two pixels wide inside the box
            np.testing.assert_array_equal(drawn, want)
        # one reference box given: one map
        one = occlens.explain(detector, picture, patch=4, target="box:6,4,18,14:car")
        explained(page, picture, "box:6,4,18,14:car")
        check_maps(page, one, detector.labels)
        assert "explaining box:6,4,18,14:car: 1 box sub-target" in page.text_content("#verdict")


@needs_chromium
def test_a_margin_and_a_regression_are_drawn_and_said(servers, classifier, picture, browser):
    with viewer_page(browser, servers["classifier"].url) as page:
        page.wait_for_function("window.occlensView.health !== null")
        for target, role in [("margin:0,2", "margin: tabby vs Egyptian cat"), ("regression:1", "regression: output 1")]:
            expected = occlens.explain(classifier, picture, patch=8, target=target)
            explained(page, picture, target)
            np.testing.assert_allclose(np.array(page.evaluate("window.occlensView.exact.delta")), expected.delta,
                                       rtol=0, atol=1e-6)  # fmt: skip
            check_maps(page, expected, classifier.labels)
            check_picked(page, expected, 0)
            assert page.text_content("#map-caption") == f"exact δL per window for {role}"
            verdict = page.text_content("#verdict")
            assert verdict.startswith(f"Q = {expected.predicted} {NAMES[expected.predicted]}")
            assert f"explaining {target}" in verdict
            assert "a class" in page.text_content("#saliency-caption") and page.locator("#saliency").is_hidden()


@needs_chromium
def test_a_target_that_does_not_fit_is_one_line_on_the_page(servers, picture, browser):
    for server, target, words in [
        ("detector", "segment", "segment needs per-pixel class scores"),  # found when the model answers
        ("detector", "box:0,0,5000,9", "is outside the image"),
        ("segmenter", "box", "box needs detections"),
        ("classifier", "regression:99", "regression:99 is out of range"),
    ]:
        with viewer_page(browser, servers[server].url) as page:
            page.wait_for_function("window.occlensView.health !== null")
            page.fill("#target", target)
            page.set_input_files("#file", str(picture))
            page.wait_for_selector("#map[data-state=failed]", timeout=60_000)
            message = page.text_content("#error")
            assert words in message and "\n" not in message, message
            assert page.locator("#strip").is_hidden() and page.locator("#explained").is_hidden()
        status, answer = servers[server].post("/api/explain", {"target": target}, {"image": ("noise.png",
                                              picture.read_bytes())})  # fmt: skip
        one_line_error(status, answer, 400, words)
