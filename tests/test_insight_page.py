"""The insight page in a real Chromium, from ``file://``: it loads nothing from elsewhere, draws each class's mean map
in the figures' colours from the values in ``maps.npz``, lists the strategies, and its table sorts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import needs_chromium, open_page
from shortcuts import make_dataset, save_model

import occlens
from occlens.core.grid import Grid


@pytest.fixture(scope="module")
def page_of_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    model = occlens.load_model(str(save_model(root / "model")), device="cpu")
    _, boxes = make_dataset(root / "data", "watermark", bright=12, planted=4, dark=4)
    occlens.run(root / "data", root / "run", model=model, patch=4, workers=0, progress=False, figures="none")
    with open(root / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "x0", "y0", "x1", "y1"])
        for key, box in boxes.items():
            w.writerow([key, *box])
    honest = occlens.load_model(str(save_model(root / "honest", watermark=0.0)), device="cpu")
    occlens.run(root / "data", root / "other", model=honest, patch=4, workers=0, progress=False, figures="none")
    return occlens.insight(root / "run", boxes=root / "boxes.csv", compare=root / "other", progress=False)


@needs_chromium
def test_the_page_draws_the_mean_maps_and_strategies_from_the_stored_values(page_of_run, browser):
    found = page_of_run
    page, problems = open_page(browser, found.page.as_uri())
    data = json.loads((found.out / "insight.json").read_text())
    assert page.locator(".view").count() == len(data["views"])
    names = [v["name"] for v in data["views"]]
    view = page.locator(f'.view[data-view="{names[0]}"]')
    page.wait_for_selector(f'.view[data-view="{names[0]}"][data-drawn]')  # drawn when near the screen
    assert view.locator(".cluster").count() == len(found.clusters[names[0]])
    # the mean map's canvas: each pixel the colour of the mean δL there (the pixel map of the mean grid in maps.npz),
    # on the colour table's scale from -max|mean| to +max|mean|
    rgba = view.locator("canvas.map").first.evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    with np.load(found.out / "maps.npz") as z:
        mean = z[data["views"][0]["mean"]]
    g = data["grid"]
    pixels = Grid.build(g["height"], g["width"], tuple(g["patch"]), tuple(g["stride"])).pixel_map(mean)
    limit = np.abs(mean).max()
    table = bytes.fromhex(page.evaluate("OCCLENS_COLOURS"))
    index = np.clip(np.floor((pixels / limit + 1) / 2 * 256), 0, 255).astype(int)
    colours = np.frombuffer(table, np.uint8).reshape(-1, 3).astype(int)
    got = np.array(rgba, np.uint8).reshape(g["height"], g["width"], 4)[..., :3].astype(int)
    # the page's grid travels in 16 bits: a value at a colour's edge may take the next colour
    near = [np.all(got == colours[np.clip(index + k, 0, 255)], axis=-1) for k in (-1, 0, 1)]
    assert np.logical_or.reduce(near).all()
    assert near[1].mean() > 0.9 and len(np.unique(index)) > 3  # mostly exact; a map, not one colour
    # every typical image shown, linked to its page in the run's report
    first = view.locator(".cluster").first.locator(".thumbs a")
    assert first.count() == len(found.clusters[names[0]][0].typical)
    assert "image.html#id=" in first.first.get_attribute("href")
    assert problems == []


@needs_chromium
def test_the_table_sorts_the_worst_localised_first(page_of_run, browser):
    found = page_of_run
    page, problems = open_page(browser, found.page.as_uri())
    header = page.locator("#images th[data-col=inside]")
    column = list(header.evaluate("h => Array.from(h.parentNode.children).map(c => c.dataset.col || '')")).index(
        "inside"
    )
    header.click()
    cells = page.locator(f"#images tbody tr td:nth-child({column + 1})").all_inner_texts()
    values = [float(c) for c in cells if c != "-"]
    assert values == sorted(values) and values[0] == pytest.approx(
        min(r["inside"] for r in found.images if r["inside"] is not None), abs=5e-4
    )
    header.click()
    cells = page.locator(f"#images tbody tr td:nth-child({column + 1})").all_inner_texts()
    values = [float(c) for c in cells if c != "-"]
    assert values == sorted(values, reverse=True)
    key = page.locator("#images tbody tr").first.locator("a")
    assert key.get_attribute("href").startswith("../image.html#id=")
    assert problems == []


@needs_chromium
def test_the_comparison_sorts_the_maps_that_changed_most_first(page_of_run, browser):
    found = page_of_run
    page, problems = open_page(browser, found.page.as_uri())
    header = page.locator("#compare th[data-col=spearman]")
    header.click()
    keys = page.locator("#compare tbody tr td:nth-child(2)").all_inner_texts()
    expected = [r["key"] for r in sorted(found.compare, key=lambda r: r["spearman"])]
    assert keys[:4] == expected[:4] and len(keys) == 16  # the watermarked four changed most
    assert problems == []


@needs_chromium
def test_the_run_s_report_links_to_the_insight_page_only_where_one_was_written(page_of_run, browser, tmp_path):
    """The report's index shows the link to ``insight/insight.html`` once insight wrote its page there, and leaves
    it hidden, without an error, in a run that has none (the other run) or whose insight went elsewhere (--out)."""
    found = page_of_run
    page, problems = open_page(browser, (found.run / "report" / "index.html").as_uri())
    link = page.locator("#insight-link a")
    link.wait_for(state="visible", timeout=10_000)
    assert link.inner_text() == "What the model looks at across the dataset"
    link.click()
    page.wait_for_selector("body[data-ready]")
    assert page.url == found.page.as_uri() and page.locator(".view").count() > 0
    assert problems == []
    other = found.run.parent / "other"
    occlens.insight(other, out=tmp_path / "elsewhere", progress=False)
    assert (tmp_path / "elsewhere" / "insight.html").is_file()
    page, problems = open_page(browser, (other / "report" / "index.html").as_uri())
    page.wait_for_timeout(1000)  # the frame's answer would have come by now
    assert page.locator("#insight-link").is_hidden()
    assert problems == []
