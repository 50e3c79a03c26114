"""Dataset runs at scale: the compact result files, the previews, --figures and its cached figures, the
manifest's upgrade, the report kept up to date, and multi-label CSVs.

Multi-label runs use a sigmoid "colour" model: class c's logit is 20 x (mean of channel c - 0.4), so
the model predicts exactly the channels made bright (mean about 0.6) and none of the dark ones (about 0.2).
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_chromium, titles
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage
from matplotlib.text import Text
from PIL import Image
from test_runs import FAST, SIZE, colour_image, make_imagefolder, make_model, output_files, run

import occlens
from occlens.app.manifest import FILE, Manifest, Record
from occlens.app.outputs import preview_jpeg, write_run_outputs
from occlens.app.recording import Reporter
from occlens.app.summary import summarize_run
from occlens.cli import main
from occlens.core.errors import ConfigError
from occlens.core.result import OcclusionResult
from occlens.present.figure import Figures, plot

NAMES = ["red", "green", "blue"]


class Logits(torch.nn.Module):
    """Class c's logit: ``20 * (mean of channel c - 0.4)`` (a sigmoid head predicts the bright channels)."""

    def forward(self, x):
        return 20.0 * (x.mean(dim=(2, 3)) - 0.4)


def sigmoid_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(Logits(), torch.rand(1, 3, SIZE, SIZE)).save(str(folder / "multi.pt"))
    description = {"input_size": [SIZE, SIZE], "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1],
                   "labels": NAMES, "output": "sigmoid"}  # fmt: skip
    (folder / "multi.json").write_text(json.dumps(description))
    return folder / "multi.pt"


def bright(channels: tuple[int, ...], seed: int) -> Image.Image:
    """A noisy image whose ``channels`` have mean about 0.6, the others about 0.2."""
    px = np.random.default_rng(seed).integers(30, 70, (SIZE, SIZE, 3), dtype=np.uint8)
    for c in channels:
        px[..., c] += 100
    return Image.fromarray(px)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """The colour classifier of test_runs, loaded; explain(image i, label) on it, with windows that overlap."""
    model = occlens.load_model(str(make_model(tmp_path_factory.mktemp("colour"))), device="cpu")

    def result(label, seed, **options) -> OcclusionResult:
        return occlens.explain(model, colour_image(seed % 3, seed), label, patch=8, stride=4, **options)

    return result


@pytest.fixture(scope="module")
def mistake(colour) -> OcclusionResult:
    return colour(2, 0, all_classes=True)  # image 0 is red: a mistake, with K's map


# --------------------------------------------------------------------------------------------------
# the compact form


def test_compact_files_load_to_the_same_result(mistake, tmp_path):
    full, compact = tmp_path / "full", tmp_path / "compact"
    mistake.save(full)
    mistake.save(compact, compact=True)
    a, b = OcclusionResult.load(full), OcclusionResult.load(compact)
    with np.load(compact.with_suffix(".npz")) as z:
        stored = {k: z[k] for k in z.files}
    assert "pixel_map" not in stored and "occluded_loss" not in stored and stored["delta"].dtype == np.float32
    assert stored["all_delta"].dtype == np.float16 and stored["flip_map"].dtype == np.int16
    data = json.loads(compact.with_suffix(".json").read_text())
    assert data["format_version"] == 3 and data["form"] == "compact"
    assert "occluded_loss" not in data and "occluded_loss" not in data["label_map"]
    assert (b.predicted, b.label, b.target, b.correct, b.grid) == (a.predicted, a.label, a.target, a.correct, a.grid)
    for x, y in ((a.target_map, b.target_map), (a.label_map, b.label_map)):
        assert x.cls == y.cls and x.loss == y.loss
        np.testing.assert_array_equal(y.delta, x.delta.astype(np.float32))  # float32 of the same numbers
        np.testing.assert_allclose(y.occluded_loss, x.occluded_loss, rtol=1e-6)  # derived: L - δL
        np.testing.assert_allclose(y.pixel_map, x.pixel_map, rtol=1e-6, atol=1e-7)  # derived from δL and the grid
        np.testing.assert_array_equal(y.pixel_map, a.grid.pixel_map(y.delta))
        assert y.delta.dtype == y.pixel_map.dtype == np.float64  # the same API as a full file's
    np.testing.assert_allclose(b.probabilities, a.probabilities, rtol=1e-6)
    np.testing.assert_allclose(b.all_delta, a.all_delta, rtol=1e-3, atol=1e-4)  # float16
    np.testing.assert_array_equal(b.flip_map, a.flip_map)
    assert b.flips == a.flips and b.instead() == a.instead()
    # the JSON's δL grids are the npz's to 7 digits
    np.testing.assert_allclose(np.array(data["delta"]), stored["delta"], rtol=1e-6)


def test_a_result_from_a_newer_occlens_is_refused(mistake, tmp_path):
    mistake.save(tmp_path / "r", compact=True)
    data = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "r.json").write_text(json.dumps({**data, "format_version": 4}))
    with pytest.raises(occlens.OcclensError, match="made by a newer occlens"):
        OcclusionResult.load(tmp_path / "r")


def test_preview_is_the_models_view_as_jpeg():
    rows, cols = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 40), indexing="ij")
    smooth = np.stack([rows, cols, 1 - rows * cols], axis=2).astype(np.float32)  # gradients: what JPEG keeps well
    with Image.open(io.BytesIO(preview_jpeg(smooth))) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (40, 24)
        assert np.abs(np.asarray(img) / 255.0 - smooth).mean() < 0.02
    with Image.open(io.BytesIO(preview_jpeg(smooth[:, :, :1]))) as gray:  # one channel: gray RGB
        px = np.asarray(gray, dtype=np.int16)
        assert gray.mode == "RGB" and np.abs(px[..., 0] - px[..., 2]).max() <= 2


# --------------------------------------------------------------------------------------------------
# figures


def artists(fig) -> tuple[list[str], list[np.ndarray]]:
    texts = sorted(t.get_text() for t in fig.findobj(Text) if t.get_text())
    images = [np.asarray(i.get_array(), dtype=np.float64) for i in fig.findobj(AxesImage)]
    return texts, images


def test_cached_figures_draw_what_plot_draws(mistake, colour):
    other = colour(0, 4, all_classes=True)  # image 4 is green: also a mistake, another K
    assert other.correct is False and other.label != mistake.label
    figures = Figures()
    first = figures.png(mistake, mistake.image, NAMES)
    second = figures.png(other, other.image, NAMES)  # the same layout: the first figure, updated
    assert len(figures._kept) == 1
    fig = next(iter(figures._kept.values()))
    texts, images = artists(fig)
    fresh = plot(other, other.image, labels=NAMES)
    FigureCanvasAgg(fresh).draw()  # its colour bars' tick labels too
    want_texts, want_images = artists(fresh)
    assert texts == want_texts
    assert len(images) == len(want_images)
    for got, want in zip(images, want_images, strict=True):
        np.testing.assert_array_equal(got, want)
    for png in (first, second):
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.size == Image.open(io.BytesIO(first)).size
    assert first != second


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_figures_option_decides_which_images_get_a_png(tmp_path, capsys):
    model = make_model(tmp_path / "m")
    data = tmp_path / "data"
    truth = make_imagefolder(data, 8, broken=False)  # images 0 and 7 sit in the wrong folder: the mistakes
    stems = {k.rsplit(".", 1)[0] for k in truth}
    wrong = {k.rsplit(".", 1)[0] for k, (label, colour) in truth.items() if label != colour}
    figures = {}
    for mode in ("mistakes", "all", "none"):
        out = tmp_path / mode
        code, _, err = run(["run", data, "--out", out, "--model", model, *FAST, "--figures", mode], capsys)
        assert code == 0, err
        figures[mode] = {n[:-4] for n in output_files(out) if n.endswith(".png")}
        assert {n.rsplit(".", 1)[0] for n in output_files(out) if n.endswith(".jpg")} == stems
    assert figures == {"mistakes": wrong, "all": stems, "none": set()}
    # asking for more figures later redoes the images that lack one; fewer leaves the others' be
    code, _, err = run(["run", data, "--out", tmp_path / "none", "--model", model, *FAST, "--figures", "mistakes"],
                       capsys)  # fmt: skip
    assert code == 0 and f"{len(stems) - len(wrong)} done before, {len(wrong)} to do" in err
    code, _, err = run(["run", data, "--out", tmp_path / "all", "--model", model, *FAST, "--figures", "none"], capsys)
    assert code == 0 and f"{len(stems)} done before, 0 to do" in err
    with pytest.raises(ConfigError, match="figures must be one of mistakes, all, none"):
        occlens.run(data, tmp_path / "x", str(model), figures="some")


def test_a_recorded_image_whose_preview_is_gone_is_redone(tmp_path, capsys):
    model = make_model(tmp_path / "m")
    truth = make_imagefolder(tmp_path / "data", 3, broken=False)
    argv = ["run", tmp_path / "data", "--out", tmp_path / "out", "--model", model, *FAST]
    assert run(argv, capsys)[0] == 0
    (tmp_path / "out" / "images" / next(iter(truth)).replace(".png", ".jpg")).unlink()
    code, _, err = run(argv, capsys)
    assert code == 0 and "2 done before, 1 to do" in err
    assert len([n for n in output_files(tmp_path / "out") if n.endswith(".jpg")]) == 3


def test_run_outputs_of_a_grayscale_model_have_an_rgb_preview(tmp_path):
    x = torch.rand(1, 16, 16)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3)).eval()
    result = occlens.explain(net, x, patch=4)
    write_run_outputs(result, result.image, NAMES, tmp_path / "g", None, figure=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jpg", "g.json", "g.npz", "g.png"]
    with Image.open(tmp_path / "g.jpg") as img:
        assert img.mode == "RGB" and img.size == (16, 16)


# --------------------------------------------------------------------------------------------------
# the manifest and the report


FORMAT_1 = """CREATE TABLE run (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    key TEXT PRIMARY KEY, path TEXT NOT NULL, stem TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    label INTEGER, label_name TEXT, predicted INTEGER, predicted_name TEXT,
    confidence REAL, label_probability REAL, loss REAL, error TEXT, seconds REAL NOT NULL, finished TEXT NOT NULL
);
INSERT INTO run VALUES ('format', '1');
"""  # a manifest as occlens wrote it before the multi-label columns


def format_1_manifest(folder: Path, rows: str = "") -> None:
    db = sqlite3.connect(folder / FILE)
    db.executescript(FORMAT_1 + rows)
    db.close()


def test_a_format_1_manifest_is_upgraded_and_a_newer_one_refused(tmp_path):
    format_1_manifest(tmp_path, "INSERT INTO images VALUES ('a.png', '/d/a.png', 'a', 'ok', 1, 'one', 2, 'two', 0.9, "
                                "0.1, 0.2, NULL, 1.5, 'then');")  # fmt: skip
    with Manifest(tmp_path) as m:
        (record,) = m.records().values()
        assert (record.label, record.predicted, record.correct, record.true_labels) == (1, 2, False, None)
        m.add(Record("b.png", "/d/b.png", "b", "ok", predicted=0, true_labels=(0, 2), predicted_labels=(0,)))
    with Manifest(tmp_path) as m:
        b = m.records()["b.png"]
        assert b.true_labels == (0, 2) and b.predicted_labels == (0,) and b.correct is False and b.labelled
    db = sqlite3.connect(tmp_path / FILE)
    db.execute("UPDATE run SET value = '9' WHERE name = 'format'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="manifest format 9, made by a newer occlens"):
        Manifest(tmp_path)


@pytest.mark.slow
def test_a_format_1_manifest_that_cannot_be_upgraded_is_one_line_and_frees_the_folder(tmp_path):
    """Another process holds the database's write lock while the upgrade is tried: one line, the folder's lock
    released (the next open works) and the manifest left at format 1."""
    format_1_manifest(tmp_path)
    holder = sqlite3.connect(tmp_path / FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer elsewhere: reading works, writing waits (5 s) and fails
    try:
        with pytest.raises(ConfigError) as caught:
            Manifest(tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(caught.value)
    assert "cannot be upgraded" in message and "\n" not in message
    with Manifest(tmp_path) as m:  # the folder is not left locked; now the upgrade goes through
        assert m.records() == {}
    assert sqlite3.connect(tmp_path / FILE).execute("SELECT value FROM run WHERE name = 'format'").fetchone() == ("2",)


def test_the_report_is_rewritten_while_a_run_goes_on_but_throttled(tmp_path, capsys):
    model = make_model(tmp_path / "m")
    make_imagefolder(tmp_path / "data", 4, broken=False)
    out = tmp_path / "out"
    assert run(["run", tmp_path / "data", "--out", out, "--model", model, *FAST], capsys)[0] == 0
    with Manifest(out) as m:
        recorded = m.records()
    keys = sorted(recorded)
    reporter = Reporter(out, keys, "a run", NAMES, every_s=0.0, share=0.1)
    index = out / "report" / "index.js"  # the gallery's data
    index.unlink()
    reporter.maybe({k: recorded[k] for k in keys[:2]})  # due: written, with the images recorded so far
    assert reporter.written == 1 and index.is_file()
    assert keys[0] in index.read_text() and keys[3] not in index.read_text()
    assert '"done":2,"total":4,' in index.read_text()  # the page shows the run's progress
    reporter.maybe(recorded)  # at once again: not due (it waits ten times as long as the last one took)
    assert reporter.written == 1
    reporter.last -= 10 * reporter.took + 1  # as if that long has passed
    reporter.maybe(recorded)
    assert reporter.written == 2 and keys[3] in index.read_text()


# --------------------------------------------------------------------------------------------------
# multi-label CSVs


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A CSV of 6 images with bright channels and labels, some of several classes; the run's output."""
    root = tmp_path_factory.mktemp("multi")
    model = sigmoid_model(root / "model")
    shown = {"a": (0, 1), "b": (0,), "c": (1, 2), "d": (2,), "e": (0, 1, 2), "f": (1,)}  # the bright channels
    labels = {"a": "red;green", "b": "0;1", "c": "green;blue", "d": "2", "e": "red;green", "f": ""}
    for name, channels in shown.items():
        bright(channels, ord(name)).save(root / f"{name}.png")
    (root / "list.csv").write_text("path,label\n" + "".join(f"{n}.png,{labels[n]}\n" for n in shown))
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        code = main(["run", str(root / "list.csv"), "--out", str(out), "--model", str(model), *FAST])
    return root, model, out, code, stdout.getvalue(), stderr.getvalue()


def test_a_multi_label_csv_is_recorded_and_summarised_per_label(multi):
    root, _, out, code, stdout, stderr = multi
    assert code == 0, stderr
    db = sqlite3.connect(f"file:{out / FILE}?mode=ro", uri=True)
    rows = {r[0]: r[1:] for r in db.execute("SELECT key, label, true_labels, predicted_labels FROM images")}
    db.close()
    assert rows == {
        "a.png": (None, "[0, 1]", "[0, 1]"),
        "b.png": (None, "[0, 1]", "[0]"),  # green missed
        "c.png": (None, "[1, 2]", "[1, 2]"),
        "d.png": (None, "[2]", "[2]"),  # one label in a multi-label run: a set of one
        "e.png": (None, "[0, 1]", "[0, 1, 2]"),  # blue: a false alarm
        "f.png": (None, None, "[1]"),  # unlabelled: what the sigmoid head predicts, all the same
    }
    assert "exact-match accuracy: 3/5 = 60.0% (every true label predicted, and no other)" in stdout
    lines = stdout.splitlines()
    start = lines.index("per label:") + 2
    table = {line.split()[1]: line.split()[2:] for line in lines[start : start + 3]}
    # images with the label, predicted for them, missed, false alarms
    assert table == {"red": ["3", "3", "0", "0"], "green": ["4", "3", "1", "0"], "blue": ["2", "2", "0", "1"]}
    mistakes = lines[lines.index("most confident mistakes:") + 2 : lines.index("per label:")]
    assert sorted(line.split()[1] for line in mistakes) == ["b.png", "e.png"]
    assert any(line.split()[1:] == ["b.png", "red", "red;green"] for line in mistakes)  # by name, as elsewhere
    # the result files carry a map per true label and the verdicts
    data = json.loads((out / "images" / "b.json").read_text())
    assert data["true_labels"] == [0, 1] and [v["predicted"] for v in data["verdicts"]] == [True, False]
    assert len(OcclusionResult.load(out / "images" / "b").true_maps) == 2
    assert (out / "images" / "b.png").is_file() and not (out / "images" / "a.png").is_file()  # mistakes' figures


@needs_chromium
def test_a_multi_label_run_s_report_filters_and_counts_by_label(multi, browser):
    """The report of a multi-label run: the per-label table of the command, the mistakes with their label
    lists, and the class filters matching any of an image's true (or predicted) labels."""
    out = multi[2]
    page = browser.new_context(offline=True, viewport={"width": 1280, "height": 3000}).new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "report" / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    rows = [r.split("\t") for r in page.locator("#labels tr").evaluate_all(
        "rs => rs.map(r => Array.from(r.cells, c => c.textContent).join('\\t'))")]  # fmt: skip
    # images with the label, predicted for them, missed, false alarms: as the command prints them
    assert rows[1:] == [["0 red", "3", "3", "0", "0"], ["1 green", "4", "3", "1", "0"], ["2 blue", "2", "2", "0", "1"]]
    assert page.locator("#classes").count() == 0  # no per-class table of single labels
    mistakes = {r[1]: r[2:] for r in (t.split("\t") for t in page.locator("#mistakes tr").evaluate_all(
        "rs => rs.slice(1).map(r => Array.from(r.cells, c => c.textContent).join('\\t'))"))}  # fmt: skip
    assert mistakes == {"b.png": ["0 red", "0 red; 1 green"], "e.png": ["0 red; 1 green; 2 blue", "0 red; 1 green"]}
    assert "true: red, green" in page.text_content(".card[title='b.png']")
    page.select_option("#f-true", "1")  # true labels holding green
    assert titles(page, want := ["a.png", "b.png", "c.png", "e.png"], ordered=False) == want
    page.select_option("#f-true", "")
    page.select_option("#f-pred", "2")  # predicted labels holding blue
    assert titles(page, want := ["c.png", "d.png", "e.png"], ordered=False) == want
    options = page.locator("#f-true option").all_text_contents()
    assert options == ["any", "0 red (3)", "1 green (4)", "2 blue (2)"]
    page.select_option("#f-pred", "")
    page.click("#labels a[href='#true=2']")  # a label's row opens the gallery filtered to it
    assert titles(page, want := ["c.png", "d.png"], ordered=False) == want
    page.click("#labels tr:nth-child(4) td:last-child a")  # blue's false alarms: every image predicted blue
    assert titles(page, want := ["c.png", "d.png", "e.png"], ordered=False) == want
    assert "exact-match accuracy 3/5 = 60.0%" in page.text_content("#stats")  # the command's words
    page.select_option("#f-pred", "")
    with page.expect_navigation():
        page.click(".card[title='b.png']")
    page.wait_for_selector("body[data-ready]")
    cells = "rs => rs.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    facts = dict(page.locator("table.facts tr").evaluate_all(cells))
    assert facts["true labels"] == "0 red; 1 green" and facts["predicted labels (P > 0.5)"] == "0 red"
    assert "true class K" not in facts and "P(K)" not in facts  # several true labels: no one class K
    assert not errors, errors


def test_summary_counts_per_label_from_records():
    def rec(key, truth, said):
        return Record(key, key, key, "ok", predicted=said[0] if said else 0, confidence=0.5, true_labels=truth,
                      predicted_labels=said)  # fmt: skip

    records = [rec("a", (0, 3), (0, 3)), rec("b", (3,), (1,)), rec("c", (0,), (0, 1)), rec("d", None, None)]
    s = summarize_run(records, names=["zero", "one", "two", "three"])
    assert (s.labelled, s.correct, s.multi_label) == (3, 1, True)
    counts = {c.name: (c.images, c.predicted, c.missed, c.false_alarms) for c in s.labels}
    assert counts == {"zero": (2, 2, 0, 0), "one": (0, 0, 0, 2), "three": (2, 1, 1, 0)}


@pytest.mark.parametrize(
    "csv, softmax, message",
    [
        ("path,label\nb.png,red;purple\n", False, "'purple' is not a class name"),
        ("path,label\nb.png,0;7\n", False, "label 7 is out of range"),
        ("path,label\nb.png,red;green\n", True, "is a softmax over classes that predicts one of them"),
    ],
)
def test_bad_multi_label_csvs_are_one_line_before_any_work(multi, tmp_path, capsys, csv, softmax, message):
    root, model = multi[0], multi[1]
    if softmax:
        model = make_model(tmp_path / "softmax")
    (root / f"bad-{tmp_path.name}.csv").write_text(csv)
    code, _, err = run(["run", root / f"bad-{tmp_path.name}.csv", "--out", tmp_path / "out", "--model", model, *FAST],
                       capsys)  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert message in line and "b.png" in line
    assert not (tmp_path / "out" / "images").exists()
