"""The HTML report of ``occlens run``: complete, local-only, escaped, drawn right in a real browser, and
updated incrementally.

The run uses the colour classifier of test_runs (prediction = the brightest channel) on images of
which every 7th sits in the wrong class folder, so the mistakes are known. The class names contain
HTML (``<img ...>``, ``&``, quotes) to prove that every text is shown as text.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sqlite3
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from conftest import needs_chromium, open_page, titles
from PIL import Image
from test_runs import FAST, make_imagefolder, make_model

import occlens
from occlens.app.manifest import FILE, Manifest
from occlens.app.recording import Reporter
from occlens.app.summary import summarize_run
from occlens.cli import main
from occlens.core.result import OcclusionResult
from occlens.present.report import write_report

HOSTILE = "green <img src=x onerror=alert(1)>"
NAMES = ["red & co", HOSTILE, 'blue "b"']
N = 15  # images 0, 7 and 14 sit in the wrong folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A finished run: (out folder, {key: (K, Q)} of the good images)."""
    root = tmp_path_factory.mktemp("report-run")
    model = make_model(root / "model", names=NAMES)
    truth = make_imagefolder(root / "data", N, names=NAMES)
    argv = ["run", root / "data", "--out", root / "out", "--model", model, *FAST, "--workers", "0", "--figures", "all"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", io.StringIO())
        mp.setattr(sys, "stderr", io.StringIO())
        assert main([str(a) for a in argv]) == 2  # the broken image
    return root / "out", truth


def records_of(out: Path) -> list:
    with Manifest(out) as manifest:
        return sorted(manifest.records().values(), key=lambda r: r.key)


def loaded(path: Path, call: str):
    """The JSON arguments of a data file ``call(...);``."""
    text = path.read_text(encoding="ascii")
    assert text.startswith(call + "(") and text.endswith(");\n"), path
    return json.loads("[" + text[len(call) + 1 : -3] + "]")


def index_of(out: Path) -> dict:
    return loaded(out / "report" / "index.js", "OCCLENS.index")[0]


def data_of(out: Path, ident: str) -> dict:
    name, data = loaded(out / "report" / "data" / f"{ident}.js", "OCCLENS.image")
    assert name == ident
    return data


def decoded(m: dict, shape) -> np.ndarray:
    """A quantised grid back as numbers (the page's decode, written again here)."""
    q = np.frombuffer(base64.b64decode(m["q"]), "<u2").astype(np.float64)
    return (m["lo"] + q * (m["hi"] - m["lo"]) / 65535).reshape(shape)


class Links(HTMLParser):
    """Every src/href of a page, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v is not None]


def local(base: Path, link: str, out: Path) -> Path:
    """The file a relative link names; it must be inside ``out``."""
    assert not link.startswith(("/", "//")) and ":" not in link.split("#")[0], link
    target = (base / unquote(link.split("#")[0].split("?")[0])).resolve()
    assert target.is_relative_to(out.resolve()), link
    return target


# --------------------------------------------------------------------------------------------------
# the files


def test_one_data_file_per_image_and_only_local_links(report):
    out, truth = report
    folder = out / "report"
    index = index_of(out)
    entries = index["entries"]
    assert sorted(entries["key"]) == sorted(truth)  # the broken image is in the failures
    assert {f"{i}.js" for i in entries["id"]} == {p.name for p in (folder / "data").iterdir()}
    for page in ("index.html", "image.html"):
        parser = Links()
        parser.feed((folder / page).read_text(encoding="utf-8"))
        assert {a.get("src") for t, a in parser.tags if t == "script"} <= {"colours.js", "report.js", "index.js"}
        hidden = [a for t, a in parser.tags if t == "p" and a.get("id") == "insight-link"]
        for link in parser.links:
            if link == "insight/insight.html":  # shown once occlens insight wrote it (tests/test_insight_page.py)
                assert page == "index.html" and len(hidden) == 1 and "hidden" in hidden[0]
                assert not local(folder, link, out).exists()  # no insight in this run: the link stays hidden
                continue
            assert local(folder, link, out).is_file(), (page, link)
    for name in ("index.html", "image.html", "colours.js", "report.js", "report.css", "index.js"):
        text = (folder / name).read_text(encoding="utf-8")
        assert "http:" not in text and "https:" not in text and "@import" not in text and "//" + "cdn" not in text
    script = (folder / "report.js").read_text(encoding="utf-8")
    assert "fetch(" not in script and "XMLHttpRequest" not in script  # Chromium refuses both from file://
    for ident, key, thumb in zip(entries["id"], entries["key"], entries["thumb"], strict=True):
        data = data_of(out, ident)
        assert data["key"] == key and data["preview"] == thumb
        assert local(folder, thumb, out).is_file()
        assert local(folder, data["figure"], out).is_file()  # the run drew its figures: they are linked
        with Image.open(local(folder, thumb, out)) as img:
            assert img.size == (data["grid"]["width"], data["grid"]["height"])  # the model's 32 x 32 view


def test_data_files_hold_the_results_maps(report):
    out, truth = report
    entries = index_of(out)["entries"]
    by_key = {r.key: r for r in records_of(out)}
    for ident, key in zip(entries["id"], entries["key"], strict=True):
        label, colour = truth[key]
        result = OcclusionResult.load(out / "images" / by_key[key].stem)
        data = data_of(out, ident)
        expected = [("predicted class Q", colour, result.delta)]
        if label != colour:
            expected.append(("true class K", label, result.label_map.delta))
        assert [(m["role"], m["class"]) for m in data["maps"]] == [(r, [k, NAMES[k]]) for r, k, _ in expected]
        for m, (_, _, delta) in zip(data["maps"], expected, strict=True):
            step = (delta.max() - delta.min()) / 65535
            assert np.abs(decoded(m, delta.shape) - delta).max() <= step / 2 + 1e-12
            assert (m["lo"], m["hi"]) == (delta.min(), delta.max())
        assert data["limit"] == max(float(np.abs(d).max()) for _, _, d in expected)
        assert data["correct"] == (label == colour) and data["label"] == [label, NAMES[label]]
        assert data["confidence"] == float(result.probabilities[colour])
        assert [t[0] for t in data["topK"]] == [c for c, _ in result.top_k(3)]
        assert data["multiLabel"] is None and data["instead"] is None


def test_the_colours_are_the_figures(report):
    """The report's colour table (static/colours.js, shipped) is the figures' matplotlib colour map: a change
    of either without writing the file again (python -m occlens.present.report.colours) fails here."""
    from importlib import resources

    import matplotlib

    from occlens.present.figure import CMAP
    from occlens.present.report.colours import colours_script

    shipped = resources.files("occlens.present.report").joinpath("static", "colours.js").read_bytes()
    assert shipped == colours_script()
    assert (report[0] / "report" / "colours.js").read_bytes() == shipped  # the report's copy
    table = re.search(r'var OCCLENS_COLOURS = "([0-9a-f]+)";', shipped.decode()).group(1)
    colours = np.frombuffer(bytes.fromhex(table), np.uint8).reshape(-1, 3)
    expected = np.rint(matplotlib.colormaps[CMAP](np.arange(256))[:, :3] * 255)
    assert colours.shape == (256, 3) and np.array_equal(colours, expected)
    assert expected[0, 0] > expected[0, 2] and expected[-1, 2] > expected[-1, 0]  # red below zero, blue above
    script = (report[0] / "report" / "report.js").read_text(encoding="utf-8")
    assert re.search(r"[0-9a-f]{96}", script) is None  # no hand-copied table left in the script


def test_the_index_holds_the_summary(report):
    out, truth = report
    index = index_of(out)
    wrong = [k for k, (label, colour) in truth.items() if label != colour]
    assert (index["images"], index["explained"], index["labelled"], index["correct"]) == (N + 1, N, N, N - 3)
    assert (index["done"], index["total"]) == (N + 1, N + 1)  # the run passes its total: a finished run
    assert sorted(index["entries"]["key"][i] for i in index["mistakes"]) == sorted(wrong)
    assert [c[:2] for c in index["classes"]] == [[k, n] for k, n in enumerate(NAMES)]
    assert [c[2:] for c in index["classes"]] == [[5, 4, 5]] * 3
    [(key, error)] = index["failures"]
    assert key == "red & co/broken.png" and "not an image Pillow can read" in error


# --------------------------------------------------------------------------------------------------
# incremental updates


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_an_update_writes_only_new_images_and_removes_stale_ones(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    shutil.rmtree(out / "report")
    records = records_of(out)
    ok = [r for r in records if r.ok]
    for r in ok[:4]:  # these have no preview from the run: the report makes theirs (and removes it with them)
        (out / "images" / f"{r.stem}.jpg").unlink()
    write_report(out, records[:5], summarize_run(records[:5]), images=out / "images", total=len(records))
    first = mtimes(out / "report" / "data")
    assert len(first) == sum(r.ok for r in records[:5]) and index_of(out)["done"] == 5
    write_report(out, records, summarize_run(records), images=out / "images", total=len(records))
    second = mtimes(out / "report" / "data")
    assert len(second) == len(ok) and all(second[k] == t for k, t in first.items())  # old ones untouched
    assert index_of(out)["done"] == index_of(out)["total"] == len(records)
    again = mtimes(out / "report" / "data")
    write_report(out, records, summarize_run(records), images=out / "images")
    assert mtimes(out / "report" / "data") == again  # nothing new: only the index is written
    # two images dropped, one explained again (a new finishing time): their files go, the new one comes
    kept = [r for r in records if r.key not in (ok[0].key, ok[1].key)]
    kept = [replace(r, finished="2030-01-01T00:00:00+00:00") if r.key == ok[2].key else r for r in kept]
    (out / "report" / "pages").mkdir()  # the earlier layout's files are removed too
    (out / "report" / "pages" / "00001.html").write_text("old")
    write_report(out, kept, summarize_run(kept), images=out / "images")
    index = index_of(out)
    assert sorted(index["entries"]["key"]) == sorted(r.key for r in kept if r.ok)
    assert {f"{i}.js" for i in index["entries"]["id"]} == set(mtimes(out / "report" / "data"))
    stems = {r.key: r.stem for r in kept}
    ids = dict(zip(index["entries"]["key"], index["entries"]["id"], strict=True))
    made = {f"{ids[k]}.jpg" for k in ids if not (out / "images" / f"{stems[k]}.jpg").exists()}
    assert len(made) == 2 and made == set(mtimes(out / "report" / "previews"))  # ok[2], ok[3]; ok[0..1] removed
    assert len(set(mtimes(out / "report" / "data")) - set(again)) == 1
    assert not (out / "report" / "pages").exists()
    assert not [p for p in (out / "report").rglob("*") if p.name.endswith(".part")]


def test_an_image_whose_outputs_are_gone_is_listed_not_shown(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    shutil.rmtree(out / "report")
    records = records_of(out)
    gone = next(r for r in records if r.ok)
    (out / "images" / f"{gone.stem}.npz").unlink()
    write_report(out, records, summarize_run(records), images=out / "images")
    index = index_of(out)
    assert gone.key not in index["entries"]["key"] and len(index["entries"]["key"]) == N - 1
    [(key, error)] = index["unreadable"]
    assert key == gone.key and "cannot read an occlens result" in error


def test_the_runs_preview_is_used_when_it_wrote_one(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    shutil.rmtree(out / "report")
    records = [r for r in records_of(out) if r.ok]
    for r in records:  # as the run writes it: the model's view, at the grid's size
        Image.new("RGB", (32, 32), (10, 200, 30)).save(out / "images" / f"{r.stem}.jpg")
    (out / "images" / f"{records[0].stem}.png").unlink()  # figures are optional
    write_report(out, records, summarize_run(records), images=out / "images")
    index = index_of(out)
    assert not list((out / "report" / "previews").iterdir())
    for ident, key, thumb in zip(
        index["entries"]["id"], index["entries"]["key"], index["entries"]["thumb"], strict=True
    ):
        stem = next(r.stem for r in records if r.key == key)
        data = data_of(out, ident)
        assert (
            local(out / "report", thumb, out) == (out / "images" / f"{stem}.jpg").resolve() and data["preview"] == thumb
        )
        assert (data["figure"] is None) == (key == records[0].key)
    # from the data files already there: the same links
    write_report(out, records, summarize_run(records), images=out / "images")
    assert index_of(out)["entries"]["thumb"] == index["entries"]["thumb"]


def test_the_images_are_where_the_caller_says(report, tmp_path):
    """The report reads the images' files from the folder it is given, and links them relative to itself."""
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    shutil.rmtree(out / "report")
    (out / "images").rename(out / "files")
    records = records_of(out)
    write_report(out, records, summarize_run(records), images=out / "files")
    index = index_of(out)
    assert len(index["entries"]["key"]) == N and not index["unreadable"]
    for ident in index["entries"]["id"]:
        figure = data_of(out, ident)["figure"]
        assert figure.startswith("../files/") and local(out / "report", figure, out).is_file()


def test_what_a_multi_label_or_all_classes_result_shows(tmp_path):
    """The verdicts of several true labels, their maps, and what the model says instead."""
    import torch

    import occlens
    from occlens.core.records import Record

    class Sigmoid(torch.nn.Module):  # class c's logit: 8 x (mean of channel c) - 3
        def forward(self, x):
            return 8 * x.mean(dim=(2, 3)) - 3

    image = torch.zeros(3, 16, 16)
    image[0], image[1], image[2, :8] = 0.85, 0.87, 0.5
    image[0, :8, :8] = 1.0  # class 0 wins by its top-left quarter: grayed, class 1 takes over
    result = occlens.explain(Sigmoid().eval(), image, [0, 2], patch=8, output="sigmoid", all_classes=True)
    assert result.predicted == 0 and result.predicted_labels == (0, 1) and result.flips == 1
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    result.save(out / "images" / "one")
    record = Record("one.png", "one.png", "one", "ok", predicted=0, confidence=float(result.probabilities[0]),
                    loss=result.loss, true_labels=(0, 2), predicted_labels=(0, 1))  # fmt: skip
    write_report(out, [record], summarize_run([record]), images=out / "images")
    index = index_of(out)  # the gallery counts it a mistake (not unlabelled): its labels are not all predicted
    assert index["entries"]["label"] == [None] and index["entries"]["correct"] == [0] and index["correct"] == 0
    data = data_of(out, index["entries"]["id"][0])
    assert [(c, v) for c, _, _, v in data["multiLabel"]["verdicts"]] == [(0, True), (2, False)]
    assert data["multiLabel"]["predicted"] == [[0, None], [1, None]] and data["correct"] is False
    assert [m["class"][0] for m in data["maps"]] == [0, 2] and data["maps"][1]["role"].startswith("true label (MISSED")
    codes = np.frombuffer(base64.b64decode(data["instead"]["codes"]), np.uint8).reshape(result.flip_map.shape)
    classes = [c for c, *_ in data["instead"]["classes"]]
    assert classes == [1] and data["instead"]["flips"] == 1 and data["instead"]["rest"] == 0
    assert np.array_equal(np.array([0, *classes])[codes], result.flip_map)


# --------------------------------------------------------------------------------------------------
# in a real browser


@needs_chromium
def test_the_gallery_filters_and_sorts(report, browser):
    out, truth = report
    wrong = sorted(k for k, (label, colour) in truth.items() if label != colour)
    db = sqlite3.connect(out / FILE)
    confidence = dict(db.execute("SELECT key, confidence FROM images WHERE status = 'ok'").fetchall())
    db.close()
    page, problems = open_page(browser, (out / "report" / "index.html").as_uri(), height=3000)

    assert titles(page, want := sorted(truth), ordered=False) == want  # the gallery's titles once it has redrawn
    assert page.text_content("#count") == f"{N} of {N} images"
    assert titles(page, want := sorted(truth, key=lambda k: (-confidence[k], k))) == want  # confidence, high first
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    stats = page.text_content("#stats")
    assert f"accuracy {N - 3}/{N} = {100 * (N - 3) / N:.1f}%" in stats and "1 failed" in stats
    assert page.locator("#failures td").first.text_content() == "red & co/broken.png"

    page.select_option("#f-correct", "incorrect")  # the mistakes only
    assert titles(page, want := wrong, ordered=False) == want
    assert page.text_content("#count") == f"{len(wrong)} of {N} images"
    assert all("wrong" in c for c in page.locator("#gallery .card").evaluate_all("cs => cs.map(c => c.className)"))
    page.select_option("#f-sort", "conf-asc")  # least confident first
    assert titles(page, want := sorted(wrong, key=lambda k: confidence[k])) == want
    assert "show=incorrect" in page.url and "sort=conf-asc" in page.url  # the view is kept in the address

    page.select_option("#f-correct", "all")
    assert any(o.startswith(f"1 {HOSTILE} (") for o in page.locator("#f-true option").all_text_contents())
    page.select_option("#f-true", "1")  # true class K = 1, the HTML-named one
    assert titles(page, want := sorted(k for k, (label, _) in truth.items() if label == 1), ordered=False) == want
    page.select_option("#f-true", "")
    page.select_option("#f-pred", "2")
    assert titles(page, want := sorted(k for k, (_, colour) in truth.items() if colour == 2), ordered=False) == want
    page.select_option("#f-pred", "")
    values = sorted(confidence.values())
    gap = max(range(1, len(values)), key=lambda i: values[i] - values[i - 1])  # between two confidences
    page.fill("#f-min", f"{(values[gap - 1] + values[gap]) / 2:.7f}")
    assert titles(page, want := sorted(k for k, v in confidence.items() if v >= values[gap]), ordered=False) == want
    page.fill("#f-min", "0")
    page.click("#classes a[href='#pred=0']")  # a per-class row opens the gallery filtered to it (on hashchange)
    assert titles(page, want := sorted(k for k, (_, colour) in truth.items() if colour == 0), ordered=False) == want
    assert not problems, problems


@needs_chromium
def test_names_are_text_everywhere(report, browser):
    out, truth = report
    key = next(k for k, (label, colour) in truth.items() if label == 1 and colour != 1)
    page, problems = open_page(browser, (out / "report" / "index.html").as_uri(), height=3000)
    assert HOSTILE in page.text_content("#mistakes") and HOSTILE in page.text_content("#classes")
    with page.expect_navigation():  # to the image page: waiting for data-ready before it would find the old page's
        page.click(f"#mistakes a:text-is('{key}')")
    page.wait_for_selector("body[data-ready]")
    assert HOSTILE in page.text_content("h1") and HOSTILE in page.text_content(".verdict")
    assert page.locator("img[src=x]").count() == 0
    assert not problems, problems


def pixels(page, selector: str) -> list[list[list[int]]]:
    """The RGB of each window's centre on each map canvas matching ``selector``."""
    return page.evaluate(
        """(selector) => Array.from(document.querySelectorAll(selector)).map((canvas) => {
            const size = Number(canvas.dataset.cell), w = canvas.width, rows = canvas.height / size, cols = w / size;
            const data = canvas.getContext("2d").getImageData(0, 0, w, canvas.height).data, out = [];
            for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
                const o = 4 * ((r * size + size / 2) * w + c * size + size / 2);
                out.push([data[o], data[o + 1], data[o + 2]]);
            }
            return out;
        })""",
        selector,
    )


@needs_chromium
def test_a_mistake_page_draws_q_and_k(report, browser):
    out, truth = report
    wrong = sorted(k for k, (label, colour) in truth.items() if label != colour)
    page, problems = open_page(browser, (out / "report" / "index.html").as_uri() + "#show=incorrect", height=3000)
    order = titles(page)
    assert sorted(order) == wrong
    first = order[0]
    with page.expect_navigation():
        page.locator("#gallery .card").first.click()
    page.wait_for_selector("body[data-ready]")
    assert "/image.html#id=" in page.url and page.text_content("h1") == first
    label, colour = truth[first]
    captions = page.locator("figure.map-row figcaption").all_text_contents()
    assert captions == [f"predicted class Q: {colour} {NAMES[colour]}", f"true class K: {label} {NAMES[label]}"]
    assert page.text_content(".verdict").startswith("INCORRECT: predicted Q")
    q_cells, k_cells = pixels(page, "figure.map-row canvas.map")
    # graying a window dims Q's bright channel (its loss rises: δL < 0, red) and lifts K's (δL > 0, blue)
    assert len(q_cells) == len(k_cells) == 16
    assert all(r > b for r, _, b in q_cells) and all(b > r for r, _, b in k_cells)
    assert page.locator("canvas.overlay").count() == 2
    # the windows and the maps are shown at their own size: scaled, pixelated, they would lose whole columns
    shown = page.eval_on_selector_all(
        "canvas.image, canvas.map", "cs => cs.map(c => [c.clientWidth - c.width, c.clientHeight - c.height])"
    )
    assert shown and all(d == [0, 0] for d in shown), shown
    assert "δL < 0" in page.text_content(".legend")
    # the run's figure holds the same maps: linked, not drawn again; the image with its windows is drawn once
    figure = local(out / "report", page.get_attribute("a#figure", "href"), out)
    assert figure.is_file() and figure.suffix == ".png" and page.locator("img").count() == 0
    assert page.locator("canvas.image").count() == 1
    # previous / next follow the gallery's filter; the gallery link brings the filter back
    page.wait_for_selector("#nav a[rel=next]")
    assert f"1 of {len(wrong)}" in page.text_content("#nav")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        f"document.querySelector('h1') && document.querySelector('h1').textContent === {json.dumps(order[1])}"
    )
    page.wait_for_selector("#nav a[rel=prev]")
    assert f"2 of {len(wrong)}" in page.text_content("#nav")
    with page.expect_navigation():
        page.click("#back")
    page.wait_for_selector("body[data-ready]")
    assert page.text_content("#count") == f"{len(wrong)} of {N} images"
    assert not problems, problems


class CtrlCAt(torch.nn.Module):
    """A model that the user stops with Ctrl-C at its ``n``-th forward pass (before, it is ``net``)."""

    def __init__(self, net, n: int):
        super().__init__()
        self.net, self.n, self.calls = net, n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.net(x)


def test_an_interrupted_run_leaves_a_report_of_all_it_did_that_says_it_stopped(tmp_path):
    model = occlens.load_model(make_model(tmp_path / "model", names=NAMES))
    make_imagefolder(tmp_path / "data", N, names=NAMES)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        occlens.run(tmp_path / "data", out, replace(model, module=CtrlCAt(model.module, 6).eval()), patch=8, workers=0)
    index, recorded = index_of(out), records_of(out)
    assert 0 < len(recorded) < N + 1 and index["stopped"] is True  # the run was really stopped half-way
    assert (index["done"], index["total"]) == (len(recorded), N + 1)
    assert sorted(index["entries"]["key"]) == sorted(r.key for r in recorded if r.ok)  # every image it recorded
    occlens.run(tmp_path / "data", out, replace(model, module=CtrlCAt(model.module, -1).eval()), patch=8, workers=0)
    index = index_of(out)  # resumed to the end: no longer stopped
    assert index["stopped"] is False and index["done"] == index["total"] == N + 1


def in_progress(report, browser, tmp_path, refresh_ms: int, reading=None):
    """A copy of the run whose report lists only its first 4 images (of all), open in a page that reads
    index.js again every ``refresh_ms`` at first; ``reading(url)`` is called for each reading. Returns
    (out, the run's records, page)."""
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    shutil.rmtree(out / "report")
    records = records_of(out)
    write_report(out, records[:4], summarize_run(records[:4]), images=out / "images", total=len(records))
    page = browser.new_context(offline=True).new_page()
    page.add_init_script(f"window.OCCLENS_REFRESH_MS = {refresh_ms}")
    if reading is not None:
        page.on("request", lambda r: reading(r.url) if "/index.js?" in r.url else None)
    page.goto((out / "report" / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    return out, records, page


@needs_chromium
@pytest.mark.slow
def test_a_stopped_run_s_report_says_so_and_is_read_no_more(report, browser, tmp_path):
    """A run in progress is read again and again, each reading that finds nothing new waiting twice as long
    as the one before (a run killed outright cannot say it stopped); a report that says the run stopped is
    read no more."""
    readings = []
    out, records, page = in_progress(report, browser, tmp_path, 50, lambda url: readings.append(url))
    page.wait_for_timeout(1500)
    # nothing new: read after 50, 100, 200, 400 and 800 ms (after 1.55 s in all), not 30 times
    assert 2 <= len(readings) <= 5, readings
    write_report(out, records[:6], summarize_run(records[:6]), images=out / "images", total=len(records), stopped=True)
    page.wait_for_selector("#progress.stopped", timeout=10_000)  # within the longest wait, 32 x 50 ms
    assert page.text_content("#progress").startswith(f"6 of {len(records)} images done")
    assert "the run stopped before its last image (its last message says why); the same command resumes it" in (
        page.text_content("#progress")
    )
    read = len(readings)
    page.wait_for_timeout(2000)  # longer than the longest wait
    assert len(readings) == read


def test_a_run_stopped_with_every_image_done_has_finished(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    recorded = {r.key: r for r in records_of(out)}
    keys = sorted(recorded)
    Reporter(out, keys, "run").write(recorded, stopped=True)  # say, Ctrl-C while the last files were written
    assert index_of(out)["stopped"] is False
    Reporter(out, [*keys, "one more.png"], "run").write(recorded, stopped=True)
    assert index_of(out)["stopped"] is True


@needs_chromium
def test_the_page_opens_an_index_written_by_an_older_occlens(report, browser, tmp_path):
    """A run killed while it writes its report leaves the new page beside the last index.js: one of an older
    occlens, after an upgrade (no per-label table, no stopped state); the page opens it all the same."""
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    index = index_of(out)
    del index["labels"], index["stopped"]
    (out / "report" / "index.js").write_text("OCCLENS.index(" + json.dumps(index) + ");\n", encoding="ascii")
    page, problems = open_page(browser, (out / "report" / "index.html").as_uri(), height=3000)
    assert page.text_content("#count") == f"{N} of {N} images" and page.locator("#classes tr").count() > 1
    assert not problems, problems


@needs_chromium
def test_a_report_being_written_updates_itself(report, browser, tmp_path):
    out, records, page = in_progress(report, browser, tmp_path, 200)
    assert page.text_content("#progress").startswith(f"4 of {len(records)} images done")
    explained = sum(r.ok for r in records)
    write_report(out, records, summarize_run(records), images=out / "images", total=len(records))
    page.wait_for_function(f"document.getElementById('count').dataset.shown === '{explained}'")
    assert page.text_content("#progress").startswith(f"{len(records)} of {len(records)} images done")
    page.goto((out / "report" / "image.html").as_uri() + "#id=0123456789abcdef")  # no such image
    page.wait_for_selector("body[data-ready=missing]")
    assert "no longer in the report" in page.text_content("#content")


# --------------------------------------------------------------------------------------------------
# where the decision is: at the size of a laptop's window (the 1280 x 800)

SCREEN = {"width": 1280, "height": 800}


def open_screen(browser, url: str):
    """A page at ``url`` in a 1280 x 800 window (see :func:`open_page`)."""
    return open_page(browser, url, height=SCREEN["height"])


def inside_the_window(box: dict) -> bool:
    right, bottom = box["x"] + box["width"], box["y"] + box["height"]
    return box["x"] >= 0 and box["y"] >= 0 and right <= SCREEN["width"] and bottom <= SCREEN["height"]


@needs_chromium
def test_an_image_page_opens_with_the_decision_above_the_maps(report, browser):
    """On opening a mistake's page, without scrolling: Q with its probability, the true class K said wrong, and
    the top classes, all inside the window and above the first map; below, each class's maps once and the
    image with its windows once (the run's figure, the same maps again, is a link)."""
    out, truth = report
    entries = index_of(out)["entries"]
    key = next(k for k, (label, colour) in truth.items() if label != colour)
    ident = entries["id"][entries["key"].index(key)]
    data = data_of(out, ident)
    page, problems = open_screen(browser, (out / "report" / "image.html").as_uri() + f"#id={ident}")
    label, colour = truth[key]
    verdict = page.text_content("#decision .verdict")
    assert verdict.startswith(f"INCORRECT: predicted Q = {colour} {NAMES[colour]} (P = {data['confidence']:.3f})")
    assert f"true K = {label} {NAMES[label]} (P = {data['labelProbability']:.3f})" in verdict
    rows = page.locator("#topk tr").all_text_contents()[1:]
    assert len(rows) == len(data["topK"]) == 3
    for n, (row, (k, name, p)) in enumerate(zip(rows, data["topK"], strict=True)):
        marks = (" (Q)" if k == colour else "") + (" (K)" if k == label else "")
        assert row == f"{n + 1}{k} {name}{marks}{p:.4f}"
    first_map = page.locator("figure.map-row").first.bounding_box()
    for selector in ("#decision .verdict", "#topk"):
        box = page.locator(selector).bounding_box()
        assert inside_the_window(box), (selector, box)
        assert box["y"] + box["height"] <= first_map["y"], (selector, box, first_map)
    captions = page.locator("figure.map-row figcaption").all_text_contents()
    assert len(captions) == len(set(captions)) == 2  # Q's maps and K's, each once
    assert page.locator("canvas.map").count() == page.locator("canvas.overlay").count() == 2
    assert page.locator("canvas.image").count() == 1 and page.locator("img").count() == 0
    assert not problems, problems


def rendered_cards(page) -> list[dict]:
    """Each card drawn: its title, its text lines and whether each is cut, and its map canvas (if any) as RGBA."""
    return page.locator("#gallery .card").evaluate_all(
        """cards => cards.map(card => {
            const text = card.querySelector(".text"), c = card.querySelector("canvas.cardmap");
            const box = card.getBoundingClientRect(), textBox = text.getBoundingClientRect();
            const img = card.querySelector("img");
            return {
                title: card.title,
                href: card.getAttribute("href"),
                lines: Array.from(text.children).map(d => d.textContent),
                cut: Array.from(text.children).some(d => d.scrollWidth > d.clientWidth)
                    || textBox.bottom > box.bottom - 1 || text.scrollHeight > text.clientHeight,
                filter: img ? getComputedStyle(img).filter : null,
                map: c && c.dataset.state === "drawn" ? {
                    width: c.width, height: c.height,
                    rgba: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data),
                    same_box: JSON.stringify(c.getBoundingClientRect()) === JSON.stringify(img.getBoundingClientRect()),
                } : null,
            };
        })"""
    )


def expected_card_map(data: dict) -> np.ndarray:
    """The RGBA a card's map should hold: the image's first map (the explained class's) decoded as the page does,
    per pixel (the windows partition the image here), in the report's colours at alpha 0.6."""
    from occlens.present.colours import colour_table

    g, m = data["grid"], data["maps"][0]
    q = np.frombuffer(base64.b64decode(m["q"]), "<u2").astype(np.float64).reshape(g["rows"], g["cols"])
    values = m["lo"] + q * ((m["hi"] - m["lo"]) / 65535)  # the page's order of operations
    assert g["patch"] == g["stride"]  # a partition: each pixel's mean is its one window's δL
    pixel = np.repeat(np.repeat(values, g["patch"][0], 0), g["patch"][1], 1)[: g["height"], : g["width"]]
    index = np.clip(np.floor((pixel / data["limit"] + 1) / 2 * 256), 0, 255).astype(int)
    rgb = colour_table()[index]
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), round(255 * 0.6))], axis=2).astype(np.uint8)


@needs_chromium
def test_the_gallery_toggle_shows_each_card_s_map_and_back(report, browser):
    out, truth = report
    entries = index_of(out)["entries"]
    ids = dict(zip(entries["key"], entries["id"], strict=True))
    page, problems = open_screen(browser, (out / "report" / "index.html").as_uri())
    page.locator("#gallery").scroll_into_view_if_needed()
    photos = rendered_cards(page)
    assert photos and all(c["map"] is None and c["filter"] == "none" for c in photos)
    assert page.locator("#view-legend").is_hidden()

    page.select_option("#f-view", "map")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#gallery .card')).every(c => "
        "(c.querySelector('canvas.cardmap') || {dataset: {}}).dataset.state === 'drawn')"
    )
    maps = rendered_cards(page)
    assert [c["title"] for c in maps] == [c["title"] for c in photos]  # the same cards, each now its map
    for card in maps:
        data = data_of(out, ids[card["title"]])
        got = np.array(card["map"]["rgba"], np.uint8).reshape(card["map"]["height"], card["map"]["width"], 4)
        # a canvas stores its colours premultiplied by alpha (0.6): read back, each is within 1 of the colour drawn
        want = expected_card_map(data).astype(int)
        assert np.abs(got.astype(int) - want).max() <= 1 and np.array_equal(got[..., 3], want[..., 3]), card["title"]
        assert card["map"]["same_box"] and card["filter"] == "grayscale(1)"  # over the gray photo, as the figure
        assert "view=map" in card["href"]  # the image page's way back keeps the maps
    assert page.locator("#view-legend").is_visible() and "view=map" in page.url

    page.select_option("#f-view", "photo")
    assert all(c["map"] is None and c["filter"] == "none" for c in rendered_cards(page))
    assert page.locator("canvas.cardmap").count() == 0 and "view=map" not in page.url
    assert not problems, problems


@needs_chromium
def test_a_card_shows_its_whole_text(report, browser):
    """Each card's name, Q with its probability and K wrap inside the card (the HTML-named class is 34
    characters: cut, it would read "green <img src=x on…")."""
    out, truth = report
    entries = index_of(out)["entries"]
    conf = dict(zip(entries["key"], entries["conf"], strict=True))
    page, problems = open_screen(browser, (out / "report" / "index.html").as_uri())
    page.locator("#gallery").scroll_into_view_if_needed()
    cards = rendered_cards(page)
    assert any(truth[c["title"]][1] == 1 for c in cards)  # a card of the long, HTML-named class is drawn
    for card in cards:
        label, colour = truth[card["title"]]
        mark = "\u2713 " if label == colour else "\u2717 "
        assert card["lines"] == [card["title"], f"{mark}Q: {NAMES[colour]} ({conf[card['title']]:.3f})",
                                 f"K: {NAMES[label]}"]  # fmt: skip
        assert not card["cut"], card
    assert not problems, problems
