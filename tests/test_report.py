"""The HTML report of ``occlens run``: complete, local-only, escaped, and working in a real browser.

The run uses the colour classifier of test_runs (prediction = the brightest channel) on images of
which every 7th sits in the wrong class folder, so the mistakes are known. The class names contain
HTML (``<img ...>``, ``&``, quotes) to prove that every text is escaped and every link quoted.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from test_runs import FAST, make_imagefolder, make_model

from occlens.app.manifest import FILE, Manifest
from occlens.app.runs import summarize
from occlens.cli import main
from occlens.present.report import write_report

HOSTILE = "green <img src=x onerror=alert(1)>"
NAMES = ["red & co", HOSTILE, 'blue "b"']
N = 15  # images 0, 7 and 14 sit in the wrong folder
BROWSERS = ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
CHROMIUM = next((p for p in BROWSERS if p and Path(p).is_file()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


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


def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def pages_by_key(out: Path) -> dict[str, Path]:
    """Each detail page by the image key in its <h1>."""
    found = {}
    for page in (out / "report" / "pages").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        key = text.split("<h1>", 1)[1].split("</h1>", 1)[0]
        found[key.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')] = page
    return found


def test_report_has_a_page_per_image_and_only_local_links(report):
    out, truth = report
    folder = out / "report"
    pages = pages_by_key(out)
    assert set(pages) == set(truth)  # one page per explained image; the broken one is in the failures table
    for html in [folder / "index.html", *pages.values()]:
        text = html.read_text(encoding="utf-8")
        assert "http:" not in text and "https:" not in text and "@import" not in text
        parsed = parse(html)
        assert not [t for t, a in parsed.tags if t == "link" or (t == "script" and "src" in a)]  # all inline
        for link in parsed.links:
            assert not link.startswith(("/", "//")) and ":" not in link.split("#")[0], (html, link)
            target = link.split("#")[0]
            if target:
                assert (html.parent / unquote(target)).is_file(), (html, link)
    index = parse(folder / "index.html")
    thumbs = [a["src"] for t, a in index.tags if t == "img"]
    assert not thumbs  # the gallery is built by the script; its data names the thumbnails:
    data = json.loads((folder / "index.html").read_text().split('id="data">', 1)[1].split("</script>", 1)[0])
    assert sorted(d["key"] for d in data) == sorted(truth)
    assert all((folder / d["thumb"]).is_file() and (folder / d["page"]).is_file() for d in data)


def test_class_names_are_escaped_everywhere(report):
    out, truth = report
    pages = pages_by_key(out)
    for html in [out / "report" / "index.html", *pages.values()]:
        assert "<img src=x" not in html.read_text(encoding="utf-8"), html
    for key, (label, colour) in truth.items():
        if 1 in (label, colour):
            assert "green &lt;img src=x onerror=alert(1)&gt;" in pages[key].read_text(encoding="utf-8")


def test_mistake_pages_show_both_maps_with_the_right_colours(report):
    out, truth = report
    pages = pages_by_key(out)
    for key, (label, colour) in truth.items():
        parsed = parse(pages[key])
        maps = [a for t, a in parsed.tags if t == "svg" and a.get("class") == "map"]
        cells = [a["fill"] for t, a in parsed.tags if t == "rect"]
        assert len(cells) == len(maps) * 16  # 4 x 4 windows per map
        if label == colour:
            assert len(maps) == 1
            continue
        assert len(maps) == 2
        # graying a window dims Q's bright channel (its loss rises: δL < 0, red) and lifts K's (δL > 0, blue)
        q_cells, k_cells = cells[:16], cells[16:]
        assert all(int(c[1:3], 16) > int(c[5:7], 16) for c in q_cells), q_cells
        assert all(int(c[5:7], 16) > int(c[1:3], 16) for c in k_cells), k_cells
        text = pages[key].read_text(encoding="utf-8")
        assert "predicted class Q:" in text and "true class K:" in text and "δL &lt; 0" in text


def test_index_lists_failures_mistakes_and_per_class_counts(report):
    out, truth = report
    text = (out / "report" / "index.html").read_text(encoding="utf-8")
    failures = text.split('<table id="failures">', 1)[1].split("</table>", 1)[0]
    assert "red &amp; co/broken.png" in failures and "not an image Pillow can read" in failures
    mistakes = text.split('<table id="mistakes">', 1)[1].split("</table>", 1)[0]
    wrong = [k for k, (label, colour) in truth.items() if label != colour]
    assert mistakes.count("<tr>") == 1 + len(wrong) == 4
    assert f"accuracy <b>{N - 3}/{N} = {100 * (N - 3) / N:.1f}%</b>" in text


def test_rewriting_the_report_drops_pages_of_images_no_longer_listed(report, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(report[0], out)
    with Manifest(out) as manifest:
        records = list(manifest.records().values())[:4]
    write_report(out, records, summarize(records))
    ok = [r for r in records if r.ok]
    assert len(list((out / "report" / "pages").iterdir())) == len(ok)
    assert len(list((out / "report" / "thumbs").iterdir())) == len(ok)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium browser installed (Debian: apt-get install chromium); the report's browser test needs one",
)
def test_report_in_a_real_browser(report):
    from playwright.sync_api import sync_playwright

    out, truth = report
    wrong = sorted(k for k, (label, colour) in truth.items() if label != colour)
    db = sqlite3.connect(out / FILE)
    confidence = dict(db.execute("SELECT key, confidence FROM images WHERE status = 'ok'").fetchall())
    db.close()
    outside, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(offline=True).new_page()
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto((out / "report" / "index.html").as_uri())
            cards = page.locator("#gallery .card")
            assert cards.count() == len(truth) and page.text_content("#count") == f"{len(truth)} of {len(truth)} images"
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

            page.select_option("#f-correct", "incorrect")  # the mistakes only
            assert page.text_content("#count") == f"{len(wrong)} of {len(truth)} images"
            assert sorted(cards.nth(i).get_attribute("title") for i in range(cards.count())) == wrong
            assert all("wrong" in cards.nth(i).get_attribute("class") for i in range(cards.count()))

            page.select_option("#f-sort", "conf-asc")  # least confident first
            titles = [cards.nth(i).get_attribute("title") for i in range(cards.count())]
            assert titles == sorted(wrong, key=lambda k: confidence[k])

            page.select_option("#f-correct", "all")
            assert any(o.startswith(f"1 {HOSTILE} (") for o in page.locator("#f-true option").all_text_contents())
            page.select_option("#f-true", "1")  # true class K = 1, the HTML-named one
            expected = sorted(k for k, (label, _) in truth.items() if label == 1)
            assert sorted(cards.nth(i).get_attribute("title") for i in range(cards.count())) == expected
            page.select_option("#f-true", "")
            page.select_option("#f-pred", "2")
            assert cards.count() == sum(colour == 2 for _, colour in truth.values())
            page.select_option("#f-pred", "")
            values = sorted(confidence.values())
            gap = max(range(1, len(values)), key=lambda i: values[i] - values[i - 1])  # between two confidences
            page.fill("#f-min", f"{(values[gap - 1] + values[gap]) / 2:.7f}")
            assert cards.count() == len(values) - gap
            page.fill("#f-min", "0")

            page.select_option("#f-correct", "incorrect")
            cards.first.click()
            page.wait_for_load_state()
            assert "/pages/" in page.url
            maps = page.locator("svg.map")
            assert maps.count() == 2 and all(maps.nth(i).is_visible() for i in range(2))
            captions = page.locator("figure.map-panel figcaption").all_text_contents()
            assert captions[0].startswith("predicted class Q:") and captions[1].startswith("true class K:")
            assert page.eval_on_selector("img.figure", "i => i.complete && i.naturalWidth") > 0
            page.go_back()  # the filter is kept in the address
            page.wait_for_load_state()
            assert page.text_content("#count") == f"{len(wrong)} of {len(truth)} images"
        finally:
            browser.close()
    assert not outside, f"the report fetched {outside}"
    assert not errors, errors
