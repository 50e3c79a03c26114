"""Dataset runs and their report for targets beyond a class: a segmenter, a detector and a declared regression
through ``occlens.run`` (no worker processes), their data files (one map per sub-target, the segments' outlines
and the boxes as the results hold them, no Q or P), the summary that claims no accuracy, the gallery and an
image page in a real browser, and ``occlens insight`` refusing such a run in one line.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from conftest import needs_chromium
from PIL import Image
from test_boxes import ClosedForm
from test_report import decoded, index_of, open_screen, records_of
from test_tasks import Classifier, LocalSums

import occlens
from occlens.app.summary import summarize_run, summary_text
from occlens.cli import main
from occlens.core.result import OcclusionResult
from occlens.models.preprocess import Preprocess

H, W = 20, 24
PRE = Preprocess((H, W), None, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class Linear(torch.nn.Module):
    """Two regression outputs: ``y_0 = 2 * sum(x[0])``, ``y_1 = -sum(x[1, :5])``."""

    def forward(self, x):
        return torch.stack([2 * x[:, 0].sum((1, 2)), -x[:, 1, :5].sum((1, 2))], dim=1)


def halves(i: int) -> np.ndarray:
    """A 20 x 24 image: red on the left ``8 + 2i`` columns, blue on the right (LocalSums: segments 0 and 2)."""
    x = np.zeros((H, W, 3), np.uint8)
    x[:, : 8 + 2 * i, 0] = 200
    x[:, 8 + 2 * i :, 2] = 180 + 10 * i
    return x


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    (root / "data").mkdir()
    for i in range(3):
        Image.fromarray(halves(i)).save(root / "data" / f"{i}.png")
    out = {}
    for name, module, extra in (
        ("segment", LocalSums(), {}),
        ("box", ClosedForm(), {"target": occlens.targets.box(min_score=0.0)}),
        ("regression", Linear(), {}),
    ):
        description = {"output": "regression"} if name == "regression" else None
        model = occlens.load_model(module.eval(), preprocess=PRE, description=description)
        report = occlens.run(root / "data", root / name, model, patch=4, workers=0, progress=False, **extra)
        assert not report.summary.failed, report.summary.failed
        out[name] = (root / name, report)
    return root, out


def data_by_key(out) -> dict[str, dict]:
    from test_report import data_of

    entries = index_of(out)["entries"]
    return {k: data_of(out, i) for k, i in zip(entries["key"], entries["id"], strict=True)}


def check_maps(data: dict, result: OcclusionResult, roles: list[str]) -> None:
    """One map per sub-target, in order, under its role, as the result's δL (16-bit quantised); no Q or P."""
    g = result.grid
    assert data["predicted"] is None and data["confidence"] is None and data["probability"] is None
    assert data["topK"] == [] and data["instead"] is None and data["targetKind"] == result.target_kind
    assert [m["role"] for m in data["maps"]] == roles
    assert [t["name"] for t in data["targets"]] == list(result.sub_targets)
    for m, sub, t in zip(data["maps"], result.target_maps, data["targets"], strict=True):
        step = (m["hi"] - m["lo"]) / 131070 + 1e-12
        np.testing.assert_allclose(decoded(m, (g.rows, g.cols)), sub.delta, atol=step)
        assert m["loss"] == t["loss"] == pytest.approx(sub.loss)


def test_a_segmenter_run_shows_each_segment_with_its_outline(runs):
    _, out = runs
    folder, report = out["segment"]
    for key, data in data_by_key(folder).items():
        result = OcclusionResult.load(folder / "images" / key.removesuffix(".png"))
        assert result.target_kind == "segment" and result.sub_targets == ("0", "2")  # red: class 0, blue: class 2
        check_maps(data, result, ["segment '0'", "segment '2'"])
        for t, region in zip(data["targets"], result.target_arrays["regions"], strict=True):
            o = t["outline"]
            bits = np.unpackbits(np.frombuffer(base64.b64decode(o["bits"]), np.uint8))[: o["h"] * o["w"]]
            border = bits.reshape(o["h"], o["w"]).astype(bool)
            padded = np.pad(region, 1)  # the border: region pixels with a 4-neighbour outside (or the edge)
            inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            np.testing.assert_array_equal(border, region & ~inner)
            assert border.any() and not (border & ~region).any()
            assert t["info"]["pixels"] == int(region.sum())
    index = index_of(folder)
    assert index["entries"]["conf"] == index["entries"]["pred"] == [None] * 3 and index["classes"] == []
    assert index["entries"]["what"] == ["segments: 0, 2"] * 3
    assert report.summary.accuracy is None and report.summary.classes == ()


def test_a_detector_run_shows_each_box(runs):
    _, out = runs
    folder, report = out["box"]
    for key, data in data_by_key(folder).items():
        result = OcclusionResult.load(folder / "images" / key.removesuffix(".png"))
        assert result.target_kind == "box" and len(result.sub_targets) == len(ClosedForm.BOXES)
        check_maps(data, result, [f"box {n}" for n in result.sub_targets])
        got = [t["box"] for t in data["targets"]]
        np.testing.assert_array_equal(got, result.target_arrays["boxes"])
        assert sorted(map(tuple, got)) == sorted(tuple(map(float, b[:4])) for b in ClosedForm.BOXES)
    assert index_of(folder)["entries"]["what"] == ["boxes: 3 (1, 2)"] * 3
    assert report.summary.accuracy is None


def test_a_regression_run_says_its_output(runs):
    root, out = runs
    folder, _ = out["regression"]
    what = index_of(folder)["entries"]["what"]
    for key, data in sorted(data_by_key(folder).items()):
        result = OcclusionResult.load(folder / "images" / key.removesuffix(".png"))
        check_maps(data, result, ["output 0"])
        y0 = 2 * (np.asarray(Image.open(root / "data" / key), np.float64)[..., 0] / 255).sum()  # by hand
        assert -data["targets"][0]["loss"] == pytest.approx(y0, rel=1e-5)
        assert what[index_of(folder)["entries"]["key"].index(key)] == f"regression: output 0 = {y0:.4g}"


def test_the_summary_of_a_run_without_classes_claims_no_accuracy(runs):
    _, out = runs
    for name in ("segment", "box", "regression"):
        folder, _ = out[name]
        records = records_of(folder)
        text = summary_text(summarize_run(records), 3, 1.0)
        assert "3 images explained (no classes: no accuracy)" in text, text
        assert "accuracy:" not in text and "per class" not in text and "None" not in text


def test_insight_refuses_a_run_without_classes_in_one_line(runs, capsys):
    """Insight groups maps by the class Q; a segmenter's maps are per sub-target: one line, exit 2, nothing
    written."""
    _, out = runs
    folder, _ = out["segment"]
    assert main(["insight", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gives no class" in err[0] and "segments: 0, 2" in err[0], err
    assert not (folder / "report" / "insight").exists()
    with pytest.raises(occlens.ConfigError, match="insight groups maps by class"):
        occlens.insight(folder)


@needs_chromium
def test_a_segmenter_runs_report_in_a_browser(runs, browser):
    """At 1280 x 800, no script error: the gallery's cards name the segments (no P), and an image page
    says what is explained (the sub-targets, with s and L), draws each segment's map once, with its outline."""
    _, out = runs
    folder, _ = out["segment"]
    index = folder / "report" / "index.html"
    page, problems = open_screen(browser, index.as_uri())
    cards = page.locator("#gallery .card .pred").all_text_contents()
    assert len(cards) == 3 and all(c.startswith("segments: 0, 2 (L ") for c in cards), cards
    stats = page.text_content("#stats")
    assert "no classes: no accuracy" in stats and "mistakes" not in stats, stats
    for sort in ("conf-desc", "pred", "loss-desc"):
        page.select_option("#f-sort", sort)
        assert page.locator("#gallery .card").count() == 3
    page.select_option("#f-view", "map")
    page.wait_for_function("document.querySelectorAll('canvas.cardmap[data-state=drawn]').length === 3")
    assert not problems, problems

    entries = index_of(folder)["entries"]
    ident = entries["id"][0]
    page, problems = open_screen(browser, (folder / "report" / "image.html").as_uri() + f"#id={ident}")
    verdict = page.text_content("#decision .verdict")
    assert "explaining segments" in verdict and "2 sub-targets (0, 2)" in verdict, verdict
    rows = page.locator("#subtargets tr").all_text_contents()[1:]
    data = data_by_key(folder)[entries["key"][0]]
    assert len(rows) == len(data["targets"]) == 2
    for row, t in zip(rows, data["targets"], strict=True):
        assert row.startswith(f"{t['name']}{-t['loss']:.4f}{t['loss']:.4f}") and f"pixels {t['info']['pixels']}" in row
    assert page.locator("#topk").count() == 0
    captions = page.locator("figure.map-row figcaption").all_text_contents()
    assert captions == ["segment '0'", "segment '2'"], captions
    assert page.locator("canvas.map").count() == page.locator("canvas.overlay").count() == 2
    assert page.locator("canvas.overlay[data-mark=outline]").count() == 2
    assert page.locator("canvas.image").count() == 1
    assert not problems, problems


@pytest.mark.serve
@needs_chromium
def test_serve_lists_a_segmenters_run_and_draws_its_segments(runs, browser):
    """``occlens serve`` of a segmenter's run folder: its cards say there is no Q and what was explained, and
    explaining one draws a map per segment, its region outlined (tests/test_serve_targets.py checks the maps and
    outlines against the library's), no script error."""
    pytest.importorskip("starlette")
    from test_serve import Server, viewer_page

    from occlens.serve import Viewer
    from occlens.serve.rundir import RunFolder

    _, out = runs
    folder, _ = out["segment"]
    model = occlens.load_model(LocalSums().eval(), preprocess=PRE)
    server = Server(Viewer(model, occlens.Settings(patch=4), run=RunFolder.open(folder)))
    try:
        with viewer_page(browser, server.url) as page:
            cards = page.locator("#gallery .card")
            cards.first.wait_for()
            assert page.locator("#gallery .card span").all_text_contents() == ["Q – · segments: 0, 2"] * 3
            cards.first.click()
            page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
            assert page.locator("#error").is_hidden()
            assert page.locator("#subtargets .sub span").all_text_contents()[0].startswith("segment '0'")
            assert page.locator("#subtargets .sub").count() == 2
            assert page.get_attribute("#view", "data-mark") == "outline"
            assert "no predicted class Q · explaining segment: 2 segment sub-targets" in page.text_content("#verdict")
    finally:
        server.close()


@needs_chromium
def test_a_classifiers_run_of_a_margin_and_a_regression_keeps_q_and_lists_the_target(tmp_path, browser):
    """A classifier explained for a margin, a regression output and its prediction in one run (the CSV's target
    column): every page opens without a script error; Q and the top classes stay, and the sub-target is listed."""
    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(halves(i)).save(tmp_path / "data" / f"{i}.png")
    rows = ["path,label,target", "0.png,,regression:1", '1.png,,"margin:0,2"', "2.png,,"]
    (tmp_path / "data" / "list.csv").write_text("\n".join(rows) + "\n")
    model = occlens.load_model(Classifier().eval(), preprocess=PRE)
    occlens.run(tmp_path / "data" / "list.csv", tmp_path / "run", model, patch=4, workers=0, progress=False)
    folder = tmp_path / "run"
    by_key = data_by_key(folder)
    assert [by_key[f"{i}.png"]["targetKind"] for i in range(3)] == ["regression", "margin", "class"]
    assert by_key["2.png"]["targets"] is None and len(by_key["2.png"]["maps"]) == 1
    index = index_of(folder)["entries"]
    for key, ident in zip(index["key"], index["id"], strict=True):
        data = by_key[key]
        page, problems = open_screen(browser, (folder / "report" / "image.html").as_uri() + f"#id={ident}")
        verdict = page.text_content("#decision .verdict")
        q = " ".join(str(v) for v in data["predicted"] if v is not None)
        assert verdict.startswith(f"predicted Q = {q} (P = {data['confidence']:.3f})"), verdict
        assert page.locator("#topk tr").count() == 1 + len(data["topK"]) == 6
        listed = page.locator("#subtargets tr").all_text_contents()[1:]
        assert len(listed) == len(data["targets"] or ())
        for row, t in zip(listed, data["targets"] or (), strict=True):
            assert row.startswith(f"{t['name']}{-t['loss']:.4f}"), (row, t)
        assert page.locator("canvas.map").count() == len(data["maps"])
        assert not problems, (key, problems)
