"""``occlens insight``: planted shortcuts stand out, localisation metrics against hand-computed values, the ground-truth
parsers (COCO, VOC, CSV, masks) and their refusals, two runs compared, the command's exit codes, nothing half-written.

The runs are real ``occlens.run`` runs of :class:`shortcuts.ShortcutNet` (a tiny conv net with hand-set weights, not
trained: it uses each planted shortcut by construction) over tiny datasets the tests make.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shortcuts import KINDS, NAMES, make_dataset, save_model

import occlens
from occlens.analysis.localisation import Cells, border_band, boxes_mask, localisation, mean_interval, placement
from occlens.analysis.strategies import eigengap, features, rank_clusters, resized, spectral_clusters
from occlens.app.truth import KeyMatcher, ObjectBox, boxes_on_input, read_truth
from occlens.cli import main
from occlens.core.errors import ConfigError
from occlens.core.grid import Grid
from occlens.core.result import OcclusionResult
from occlens.models.preprocess import Preprocess

PATCH = 4  # 6 x 6 windows on the 24 x 24 input


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return occlens.load_model(str(save_model(tmp_path_factory.mktemp("model"))), device="cpu")


def make_run(root: Path, model, kind: str, patch: int = PATCH, **dataset):
    planted, boxes = make_dataset(root / f"data-{kind}", kind, **dataset)
    out = root / f"run-{kind}-{patch}"
    occlens.run(root / f"data-{kind}", out, model=model, patch=patch, workers=0, progress=False, figures="none")
    return out, planted, boxes


@pytest.fixture(scope="module")
def watermark(tmp_path_factory, model):
    return make_run(tmp_path_factory.mktemp("watermark"), model, "watermark")


# --------------------------------------------------------------------------------------------------
# strategies: a planted shortcut stands out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_shortcut_is_the_top_ranked_strategy_of_its_class(tmp_path, model, watermark, kind):
    out, planted, _ = watermark if kind == "watermark" else make_run(tmp_path, model, kind)
    found = occlens.insight(out, progress=False)
    top = found.clusters["bright"][0]
    precision = len(set(top.images) & planted) / len(top.images)
    recall = len(set(top.images) & planted) / len(planted)
    sizes = [len(c.images) for c in found.clusters["bright"]]
    assert precision >= 0.8 and recall >= 0.8, (kind, precision, recall, sizes)
    assert not top.main and found.clusters["bright"][-1].main
    assert top.unusualness >= max(c.unusualness for c in found.clusters["bright"][1:])
    assert set(top.typical) <= set(top.images) and len(top.typical) == min(6, len(top.images))
    # the class without a shortcut has no strategy as unlike its others as the planted one
    assert max(c.unusualness for c in found.clusters["dark"]) < top.unusualness
    # the images of a view are every explained image of its class, each in one of its clusters
    keys = {k for c in found.clusters["bright"] for k in c.images}
    assert keys == {k for k in found.classes["bright"].images} and len(keys) == 18


def test_the_class_mean_map_is_the_mean_of_the_stored_maps(watermark):
    out, _, _ = watermark
    found = occlens.insight(out, progress=False)
    view = found.classes["dark"]
    stored = [OcclusionResult.load(out / "images" / k.removesuffix(".png")).delta for k in view.images]
    np.testing.assert_allclose(view.mean, np.mean(stored, axis=0), rtol=1e-12)
    np.testing.assert_allclose(view.spread, np.std(stored, axis=0), rtol=1e-9, atol=1e-15)
    views = {v["name"]: v for v in json.loads((found.out / "insight.json").read_text())["views"]}
    with np.load(found.out / "maps.npz") as z:  # insight.json names each view's arrays in maps.npz
        np.testing.assert_array_equal(z[views["dark"]["mean"]], view.mean)
        np.testing.assert_array_equal(z[views["dark"]["spread"]], view.spread)
        for c, written in zip(found.clusters["bright"], views["bright"]["clusters"], strict=True):
            np.testing.assert_array_equal(z[written["mean"]], c.mean)
            assert written["images"] == list(c.images) and written["unusualness"] == round(c.unusualness, 6)


def test_spectral_clusters_find_separate_groups_and_one_group_stays_one():
    rng = np.random.default_rng(1)
    a = np.zeros((6, 6))
    a[2:4, 2:4] = -1
    b = np.zeros((6, 6))
    b[0, 5] = -1
    grids = [a + rng.normal(0, 0.02, a.shape) for _ in range(12)] + [b + rng.normal(0, 0.02, b.shape) for _ in range(5)]
    labels = spectral_clusters(features(grids))
    assert len(set(labels[:12])) == 1 and len(set(labels[12:])) == 1 and labels[0] != labels[12]
    ranked = rank_clusters(features(grids), labels)
    assert sorted(ranked[0].members.tolist()) == list(range(12, 17)) and ranked[1].main
    assert ranked[0].unusualness > 0.8  # the noise (on every window) is what the two share
    same = spectral_clusters(features([a + rng.normal(0, 0.02, a.shape) for _ in range(10)]))
    assert set(same) == {0}


@pytest.mark.timeout(180)
def test_a_shortcut_on_more_than_half_a_class_still_ranks_first(tmp_path, model):
    out, planted, _ = make_run(tmp_path, model, "watermark", planted=12)  # 12 of the 18 bright images
    clusters = occlens.insight(out, progress=False).clusters["bright"]
    assert len(clusters) == 2 and clusters[0].unusualness == clusters[1].unusualness  # each is the other's rest
    assert set(clusters[0].images) == planted and not clusters[0].main  # the larger cluster, first
    assert clusters[1].main and not set(clusters[1].images) & planted  # the square, as the dark class is seen


def test_two_equally_unusual_clusters_rank_the_one_unlike_the_other_classes_first():
    spot, square = np.zeros((6, 6)), np.zeros((6, 6))
    spot[0, 5] = square[2:4, 2:4] = -1
    grids = [spot] * 8 + [square] * 4  # the spot on 8 images, the square on 4
    x, labels = features(grids), np.array([0] * 8 + [1] * 4)
    plain = rank_clusters(x, labels)
    assert plain[0].unusualness == plain[1].unusualness and len(plain[0].members) == 4  # alone: the smaller first
    elsewhere = features([square] * 5).sum(0)  # the other classes' maps: the square
    ranked = rank_clusters(x, labels, elsewhere=elsewhere)
    assert ranked[0].members.tolist() == list(range(8)) and not ranked[0].main and ranked[1].main


def test_eigengap_counts_the_eigenvalues_before_the_largest_gap():
    assert eigengap([0.0, 0.0, 0.01, 0.9, 0.95]) == 3
    assert eigengap([0.0, 0.8, 0.85, 0.9]) == 1
    assert eigengap([0.0]) == 1


def test_resized_keeps_the_mean_and_area_averages():
    a = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(resized(a, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
    assert resized(a, 3, 5).mean() == pytest.approx(a.mean())


# --------------------------------------------------------------------------------------------------
# localisation metrics against hand-computed values


def hand_map():
    """A 4 x 6 image, 2 x 2 windows: grid [[-3, 0, 1], [0, -1, 0]]."""
    grid = Grid.build(4, 6, 2)
    delta = np.array([[-3.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    cells = Cells.of(grid)
    return grid, delta, cells, cells.values(delta)


def test_localisation_metrics_by_hand():
    grid, delta, cells, values = hand_map()
    np.testing.assert_array_equal(cells.pixels(values), grid.pixel_map(delta))
    obj = boxes_mask([(0, 0, 2, 2)], 4, 6)  # the top-left window exactly
    got = localisation(cells, values, delta, obj)
    # negative mass: 4 pixels of 3 (on the object) and 4 of 1: 12 / 16 inside; the most negative window's centre
    # (0, 0) is on the object; threshold -1.5 keeps the 4 pixels of -3: IoU 4 / 4; the object is 4 of 24 pixels
    assert got == {"inside": 0.75, "pointing": 1.0, "iou": 1.0, "area": 4 / 24}
    elsewhere = localisation(cells, values, delta, boxes_mask([(2, 2, 6, 4)], 4, 6))
    # the object covers the -1 window and (4..6, 2..4): mass 4 of 16, the pointing window misses, IoU 0 / (4 + 8)
    assert elsewhere == {"inside": 0.25, "pointing": 0.0, "iou": 0.0, "area": 8 / 24}
    half = localisation(cells, values, delta, boxes_mask([(1, 0, 3, 2)], 4, 6))
    # half of the -3 window (2 pixels, mass 6 of 16); its centre pixel (0, 0) is outside; IoU 2 / (4 + 4 - 2)
    assert half == {"inside": 6 / 16, "pointing": 0.0, "iou": pytest.approx(2 / 6), "area": 4 / 24}


def test_placement_by_hand():
    _, _, cells, values = hand_map()
    # the band: row 0 and 3 (10% of 4 rounds to 0: at least 1), columns 0 and 5 (10% of 6 rounds to 1);
    # in it: 3 pixels of the -3 window (mass 9) and 2 of the -1 window (mass 2): 11 of 16.
    # half the mass (8): the three largest pixels (3 + 3 + 3 = 9), 3 of 24 pixels
    assert placement(cells, values) == {"border": 11 / 16, "spread": 3 / 24}
    assert border_band(4, 6).sum() == 6 + 6 + 2 + 2
    nothing = placement(cells, np.ones(values.shape))
    assert np.isnan(nothing["border"]) and np.isnan(nothing["spread"])


def pixel_metrics(pixels: np.ndarray, delta: np.ndarray, grid: Grid, obj: np.ndarray) -> dict:
    """The module's definitions on the H x W pixels, written out here with plain numpy."""
    m = np.maximum(-pixels, 0)
    total = m.sum()
    band = border_band(*pixels.shape)
    ordered = np.sort(m.ravel())[::-1]
    half = int(np.argmax(np.cumsum(ordered) >= 0.5 * total * (1 - 1e-12))) + 1
    top, bottom, left, right = grid.window(int(np.argmin(delta)))
    chosen = pixels <= 0.5 * pixels.min()
    return {
        "border": m[band].sum() / total, "spread": half / m.size, "inside": (m * obj).sum() / total,
        "pointing": float(obj[(top + bottom - 1) // 2, (left + right - 1) // 2]),
        "iou": (chosen & obj).sum() / (chosen | obj).sum(), "area": obj.mean(),
    }  # fmt: skip


@pytest.mark.parametrize(("shape", "patch", "stride"), [((23, 31), (5, 7), (3, 2)), ((16, 16), (4, 4), (4, 4)),
                                                        ((9, 40), (9, 6), (1, 5))])  # fmt: skip
def test_the_cells_give_the_numbers_of_the_pixels(shape, patch, stride):
    rng = np.random.default_rng(sum(shape))
    grid = Grid.build(*shape, patch, stride)
    cells = Cells.of(grid)
    for _ in range(5):
        delta = rng.normal(-0.3, 1.0, (grid.rows, grid.cols))
        x0, y0 = rng.integers(0, shape[1] - 2), rng.integers(0, shape[0] - 2)
        obj = boxes_mask([(x0, y0, x0 + rng.integers(2, 12), y0 + rng.integers(2, 9))], *shape)
        values = cells.values(delta)
        np.testing.assert_allclose(cells.pixels(values), grid.pixel_map(delta), rtol=1e-12, atol=1e-12)
        got = placement(cells, values) | localisation(cells, values, delta, obj)
        expected = pixel_metrics(grid.pixel_map(delta), delta, grid, obj)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_box_mask_takes_the_pixels_whose_centres_lie_inside():
    m = boxes_mask([(0.5, 0.4, 2.5, 1.6)], 3, 4)
    assert m.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_boxes_are_mapped_through_the_models_resize_and_crop():
    pre = Preprocess(size=(24, 24), resize=24, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    # a 40 x 30 photo: the shorter side 30 -> 24 (x 0.8), the longer 40 -> 32, cropped 4 at each side: the model
    # sees x from 5 to 35 of the photo
    region = pre.crop_box(40, 30)
    assert region == (5.0, 0.0, 35.0, 30.0)
    assert boxes_on_input([ObjectBox(5, 0, 20, 15, 0)], region, 24, 24) == [(0.0, 0.0, 12.0, 12.0)]


def test_mean_interval_is_the_bootstrap_of_the_finite_values():
    mean, low, high, n = mean_interval([0.0, 1.0, float("nan"), 1.0, 0.0], resamples=2000, seed=3)
    assert (mean, n) == (0.5, 4) and 0 <= low < 0.5 < high <= 1
    assert mean_interval([float("nan")])[3] == 0


# --------------------------------------------------------------------------------------------------
# ground truth: COCO, VOC, CSV, masks — the same boxes give the same numbers


def write_coco(path: Path, boxes: dict, names=NAMES, prefix: str = "") -> Path:
    images, annotations = [], []
    for i, (key, (x0, y0, x1, y1)) in enumerate(sorted(boxes.items())):
        images.append({"id": i + 1, "file_name": prefix + key, "width": 24, "height": 24})
        cat = names.index(key.split("/")[0]) + 1
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})  # fmt: skip
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_voc(folder: Path, boxes: dict) -> Path:
    for key, (x0, y0, x1, y1) in boxes.items():
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = key.split("/")[-1]
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = "24", "24"
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = key.split("/")[0]
        b = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0 + 1, y0 + 1, x1, y1), strict=True):
            ET.SubElement(b, tag).text = str(v)  # VOC: 1-based, inclusive
        out = folder / key.split("/")[0] / (Path(key).stem + ".xml")
        out.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(out)
    return folder


def write_csv(path: Path, boxes: dict) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "x0", "y0", "x1", "y1", "class"])
        for key, box in sorted(boxes.items()):
            w.writerow([key, *box, key.split("/")[0]])
    return path


def write_masks(folder: Path, boxes: dict) -> Path:
    for key, (x0, y0, x1, y1) in boxes.items():
        m = np.zeros((24, 24), np.uint8)
        m[y0:y1, x0:x1] = 255
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save((folder / key).with_suffix(".png"))
    return folder


def rows_of(found) -> dict:
    return {(r["key"], r["view"]): r for r in found.images}


def test_coco_voc_csv_and_masks_give_the_same_numbers_and_the_right_ones(tmp_path, watermark):
    out, planted, boxes = watermark
    given = {
        "coco": {"boxes": write_coco(tmp_path / "coco.json", boxes)},
        "voc": {"boxes": write_voc(tmp_path / "voc", boxes)},
        "csv": {"boxes": write_csv(tmp_path / "boxes.csv", boxes)},
        "masks": {"masks": write_masks(tmp_path / "masks", boxes)},
    }
    found = {name: occlens.insight(out, out=tmp_path / f"out-{name}", progress=False, **g) for name, g in given.items()}
    first = rows_of(found["coco"])
    for name in ("voc", "csv", "masks"):
        assert rows_of(found[name]) == first, name
    # each image's numbers from its stored map and its box, computed here
    for (key, view), row in first.items():
        if view != "bright" and view != "dark":
            continue
        result = OcclusionResult.load(out / "images" / key.removesuffix(".png"))
        neg = np.maximum(-result.pixel_map, 0)  # the map as the result gives it, against the cells' numbers
        x0, y0, x1, y1 = boxes[key]
        obj = np.zeros((24, 24), bool)
        obj[y0:y1, x0:x1] = True
        assert row["inside"] == pytest.approx(neg[obj].sum() / neg.sum(), rel=1e-9)
        top, bottom, left, right = result.grid.window(int(np.argmin(result.delta)))
        assert row["pointing"] == float(obj[(top + bottom - 1) // 2, (left + right - 1) // 2])
        assert row["area"] == 36 / 576
    # the watermark's images lean on the corner: little of their mass is on the square; the others' is
    inside = {k: r["inside"] for (k, v), r in first.items() if v == "bright"}
    assert max(inside[k] for k in planted) < 0.2 < 0.4 < min(v for k, v in inside.items() if k not in planted)
    # per class: the mean with its bootstrap interval, in the CSV and the JSON
    classes = list(csv.DictReader(open(found["coco"].out / "classes.csv")))
    bright = next(r for r in classes if r["view"] == "bright")
    mean = np.mean(list(inside.values()))
    assert float(bright["inside"]) == pytest.approx(mean, rel=1e-5)
    assert float(bright["inside_low"]) < mean < float(bright["inside_high"]) and bright["inside_n"] == "18"
    data = json.loads((found["coco"].out / "insight.json").read_text())
    assert data["truth"]["kind"] == "boxes" and data["truth"]["images"] == len(boxes)


def test_the_coco_file_is_one_pycocotools_reads_as_we_do(tmp_path, watermark):
    coco = pytest.importorskip("pycocotools.coco")
    _, _, boxes = watermark
    path = write_coco(tmp_path / "coco.json", boxes)
    reference = coco.COCO(str(path))
    truth = read_truth(path, None, sorted(boxes), dict(enumerate(NAMES)))
    for image in reference.loadImgs(reference.getImgIds()):
        key = image["file_name"]
        anns = reference.loadAnns(reference.getAnnIds(imgIds=image["id"]))
        expected = [(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3],
                     NAMES.index(reference.loadCats(a["category_id"])[0]["name"])) for a in anns]  # fmt: skip
        assert [(b.x0, b.y0, b.x1, b.y1, b.cls) for b in truth.boxes[key]] == expected
        assert truth.sizes[key] == (image["width"], image["height"])


def test_file_names_match_keys_by_their_unique_ending():
    match = KeyMatcher(["cat/001.jpg", "dog/001.jpg", "dog/002.jpg"])
    assert match("cat/001.jpg") == "cat/001.jpg"
    assert match("002.jpg") == "dog/002.jpg"
    assert match("./dog/002.jpg") == "dog/002.jpg"
    assert match("001.jpg") is None  # two keys end so: no guess
    assert match.stem("dog/002.png") == "dog/002.jpg"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.json", "no such file or folder"),
        (lambda p: made(p / "bad.json", "{"), "not a COCO annotation file"),
        (lambda p: write_coco(p / "other.json", {"x/zzz.png": (0, 0, 2, 2)}, names=["x", "y"]), "none of its 1 images"),
        (lambda p: write_coco(p / "cats.json", {"bright/000.png": (0, 0, 2, 2)}, names=["bright", "dark"])
         and _rename_categories(p / "cats.json"), "none of its categories"),
        (lambda p: made(p / "cols.csv", "key,a,b\nbright/000.png,1,2\n"), "no box columns"),
        (lambda p: made(p / "keys.csv", "name,x0,y0,x1,y1\nbright/000.png,1,1,3,3\n"), "no image key column"),
        (lambda p: made(p / "empty.csv", "key,x0,y0,x1,y1\nbright/000.png,3,3,1,1\n"), "is empty"),
        (lambda p: made(p / "nan.csv", "key,x0,y0,x1,y1\nbright/000.png,a,3,1,1\n"), "is not four numbers"),
        (lambda p: (p / "voc").mkdir() or p / "voc", "without .xml files"),
        (lambda p: made(p / "voc2" / "a.xml", "<annotation><object/></annotation>").parent, "not a Pascal VOC"),
        (lambda p: made(p / "x.png", "png"), "not a COCO .json file"),
    ],
)  # fmt: skip
def test_bad_boxes_are_refused_in_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        read_truth(path, None, ["bright/000.png", "dark/000.png"], {0: "bright", 1: "dark"})
    assert "\n" not in str(err.value)


def made(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rename_categories(path: Path) -> Path:
    data = json.loads(path.read_text())
    for c in data["categories"]:
        c["name"] = "not-" + c["name"]
    path.write_text(json.dumps(data))
    return path


def test_bad_masks_are_refused_in_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m" / "elsewhere.png")
    with pytest.raises(ConfigError, match="none of its 1 masks"):
        read_truth(None, tmp_path / "m", ["bright/000.png"], {0: "bright"})
    (tmp_path / "m.csv").write_text("key,path\nbright/000.png,a.png\n")
    with pytest.raises(ConfigError, match="no mask column"):
        read_truth(None, tmp_path / "m.csv", ["bright/000.png"], {0: "bright"})
    with pytest.raises(ConfigError, match="not both"):
        read_truth(tmp_path / "m.csv", tmp_path / "m", ["bright/000.png"], {0: "bright"})


# --------------------------------------------------------------------------------------------------
# two runs compared


def test_two_runs_compared_on_their_common_grid(tmp_path, model, watermark):
    out, planted, boxes = watermark
    same = occlens.insight(out, compare=out, out=tmp_path / "same", progress=False)
    assert len(same.compare) == 26 and all(r["spearman"] == pytest.approx(1.0) for r in same.compare)
    assert not any(r["decision_changed"] for r in same.compare)
    # the same images with 8 x 8 windows (3 x 3 windows): resampled to the 6 x 6 grid and compared
    coarse = tmp_path / "coarse"
    occlens.run(out.parent / "data-watermark", coarse, model=model, patch=8, workers=0, progress=False, figures="none")
    found = occlens.insight(out, compare=coarse, boxes=write_csv(tmp_path / "b.csv", boxes), out=tmp_path / "c",
                            progress=False)  # fmt: skip
    rows = {r["key"]: r for r in found.compare}
    assert set(rows) == set(boxes) and all(r["spearman"] > 0.3 for r in rows.values())
    assert all(np.isfinite(r["inside_change"]) for r in rows.values())
    written = list(csv.DictReader(open(found.out / "compare.csv")))
    assert {r["key"] for r in written} == set(boxes)


def test_runs_without_shared_images_are_refused(tmp_path, model, watermark):
    other = tmp_path / "other"
    make_dataset(tmp_path / "d", "border", bright=3, planted=1, dark=2)
    for p in (tmp_path / "d").rglob("*.png"):
        p.rename(p.with_name("x" + p.name))
    occlens.run(tmp_path / "d", other, model=model, patch=8, workers=0, progress=False, figures="none")
    with pytest.raises(ConfigError, match="share no explained images"):
        occlens.insight(watermark[0], compare=other, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# the command: exit codes, one line, nothing half-written


def cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_writes_the_page_csvs_and_json(tmp_path, watermark, capsys):
    out, _, boxes = watermark
    code, printed, err = cli(["insight", out, "--boxes", write_csv(tmp_path / "b.csv", boxes), "--out", tmp_path / "i",
                              "-q"], capsys)  # fmt: skip
    assert code == 0, err
    assert "bright: 18 images" in printed and "insight.html" in printed
    names = {p.name for p in (tmp_path / "i").iterdir()}
    assert names == {"insight.html", "insight.js", "insight.css", "colours.js", "insight-data.js", "insight.json",
                     "maps.npz", "images.csv", "classes.csv", "clusters.csv", "present.html", "present.js"}  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "i" / "images.csv")))
    assert len(rows) == 26 and {"inside", "pointing", "iou", "border", "spread", "cluster"} <= set(rows[0])
    # again into the same folder: replaced whole, nothing left beside it
    code, _, _ = cli(["insight", out, "--out", tmp_path / "i", "-q"], capsys)
    assert code == 0 and "inside" not in open(tmp_path / "i" / "images.csv").readline()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv", "i"]


def test_the_default_out_is_in_the_runs_report(watermark, capsys):
    out, _, _ = watermark
    code, printed, _ = cli(["insight", out, "-q"], capsys)
    assert code == 0 and (out / "report" / "insight" / "insight.html").is_file()
    data = (out / "report" / "insight" / "insight-data.js").read_text()
    assert data.startswith("OCCLENS_INSIGHT(") and '"../../images/bright/000.jpg"' in data
    assert "../image.html#id=" in data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nowhere"], "not the folder of an occlens run"),
        (["{run}", "--boxes", "{tmp}/b.json", "--masks", "{tmp}/m"], "not both"),
        (["{run}", "--boxes", "{tmp}/missing.json"], "no such file"),
        (["{run}", "--compare", "{tmp}"], "not the folder of an occlens run"),
        (["{run}", "--most", "2"], "an int >= 4"),
        (["{run}", "--out", "{tmp}/full"], "holds other files"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, watermark, capsys, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run_before = sorted(p.relative_to(watermark[0]) for p in watermark[0].rglob("*"))
    argv = [a.format(tmp=tmp_path, run=watermark[0]) for a in args]
    code, _, err = cli(["insight", *argv, "--out", tmp_path / "new"] if "--out" not in argv else ["insight", *argv],
                       capsys)  # fmt: skip
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("occlens: error: ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert sorted(p.relative_to(watermark[0]) for p in watermark[0].rglob("*")) == run_before


def test_a_failure_while_writing_leaves_the_earlier_insight_whole(tmp_path, watermark, monkeypatch):
    out, _, _ = watermark
    first = occlens.insight(out, out=tmp_path / "i", progress=False)
    before = {p.name: p.read_bytes() for p in first.out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("occlens.present.report.insight.write_page", broken)
    with pytest.raises(OSError, match="disk full"):
        occlens.insight(out, out=tmp_path / "i", progress=False, seed=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "i").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i"]  # no staging folder left


def test_the_python_entry_point_takes_the_commands_options():
    import inspect

    from occlens.app.insight import InsightOptions
    from occlens.core.declare import declarations

    keywords = inspect.signature(occlens.insight).parameters
    for d in declarations(InsightOptions):
        assert keywords[d.name].default == d.default, d.name
    assert "insight" in occlens.__all__ and "Insight" in occlens.__all__


def test_what_a_killed_insight_left_is_cleared_by_the_next(tmp_path, watermark):
    out, _, _ = watermark
    occlens.insight(out, out=tmp_path / "i", progress=False)
    # killed while writing: its fresh folder half-full; killed while swapping: the earlier one moved aside
    (tmp_path / ".i.abc.part").mkdir()
    (tmp_path / ".i.abc.part" / "insight.json").write_text("{")
    (tmp_path / ".i.def.old").mkdir()
    (tmp_path / "i").rename(tmp_path / ".i.def.old" / "x")
    occlens.insight(out, out=tmp_path / "j", progress=False)  # another folder: these are not its leftovers
    assert (tmp_path / ".i.abc.part").is_dir()
    found = occlens.insight(out, out=tmp_path / "i", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i", "j"]
    assert json.loads((found.out / "insight.json").read_text())["images"] == 26


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    import tempfile

    page = (Path(__file__).resolve().parents[1] / "docs" / "insight.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "occlens.run(" in b)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exec(compile(example, "docs/insight.md", "exec"), {"__name__": "docs_example"})  # its own asserts hold
    printed = capsys.readouterr().out
    assert "bright: 12 images, 2 strategies" in printed and "mass inside the object, watermarked" in printed


def test_confusions_get_their_own_view_with_the_maps_of_q(tmp_path, model):
    make_dataset(tmp_path / "data", "watermark", bright=8, planted=3, dark=6)
    for name in ("000", "001", "002"):  # three dark images filed as bright: K = bright, Q = dark
        (tmp_path / "data" / "dark" / f"{name}.png").rename(tmp_path / "data" / "bright" / f"d{name}.png")
    occlens.run(tmp_path / "data", tmp_path / "run", model=model, patch=PATCH, workers=0, progress=False,
                figures="none")  # fmt: skip
    found = occlens.insight(tmp_path / "run", progress=False)
    wrong = {f"bright/d{n}.png" for n in ("000", "001", "002")}
    assert set(found.confusions) == {"bright -> dark"} and set(found.confusions["bright -> dark"].images) == wrong

    def loaded(key):
        return OcclusionResult.load(tmp_path / "run" / "images" / key.removesuffix(".png"))

    # the confusion's view: the maps of Q (what drove the wrong class); the class's: each image's map of K
    np.testing.assert_allclose(found.confusions["bright -> dark"].mean,
                               np.mean([loaded(k).delta for k in sorted(wrong)], axis=0), rtol=1e-12)  # fmt: skip
    bright = found.classes["bright"]
    assert wrong <= set(bright.images) and not wrong & set(found.classes["dark"].images)
    of_k = [loaded(k).label_map.delta if k in wrong else loaded(k).delta for k in bright.images]
    np.testing.assert_allclose(bright.mean, np.mean(of_k, axis=0), rtol=1e-12)
    rows = [r for r in found.images if r["key"] in wrong]
    assert {(r["view"], r["kind"]) for r in rows} == {("bright", "class"), ("bright -> dark", "confusion")}
    assert all(r["label"] == "bright" and r["predicted"] == "dark" and r["correct"] is False for r in rows)
    # fewer images than --confusions: no view of its own
    assert occlens.insight(tmp_path / "run", confusions=4, out=tmp_path / "i4", progress=False).confusions == {}


def test_a_run_in_progress_is_read_as_far_as_it_got(tmp_path, watermark):
    from occlens.app.manifest import Manifest

    out, _, _ = watermark
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    gone = "bright/003"
    (copy / "images" / f"{gone}.npz").unlink()  # recorded, but its files deleted since (or not yet whole)
    with Manifest(copy):  # a run holds the folder's lock: insight reads without it
        found = occlens.insight(copy, progress=False)
    assert [k for k, _ in found.unreadable] == [f"{gone}.png"]
    assert f"{gone}.png" not in found.classes["bright"].images and len(found.classes["bright"].images) == 17
    data = json.loads((found.out / "insight.json").read_text())
    assert data["unreadable"][0][0] == f"{gone}.png" and "cannot read the stored maps" in data["unreadable"][0][1]


def test_the_maps_that_changed_most_between_two_checkpoints_are_the_shortcuts(tmp_path, watermark):
    out, planted, _ = watermark
    honest = occlens.load_model(str(save_model(tmp_path / "model", watermark=0.0)), device="cpu")
    other = tmp_path / "honest"
    occlens.run(out.parent / "data-watermark", other, model=honest, patch=PATCH, workers=0, progress=False,
                figures="none")  # fmt: skip
    found = occlens.insight(out, compare=other, out=tmp_path / "i", progress=False)
    ranked = sorted(found.compare, key=lambda r: r["spearman"])
    # without the shortcut the watermarked images' maps move from the corner to the square: they changed most
    assert {r["key"] for r in ranked[: len(planted)]} == planted
    assert not any(r["decision_changed"] for r in ranked)  # the square alone still says bright
    assert max(r["spearman"] for r in ranked[: len(planted)]) < min(r["spearman"] for r in ranked[len(planted) :])


def test_the_commands_flags_are_the_declarations_and_help_needs_no_torch():
    import argparse
    import subprocess
    import sys

    from occlens.app.insight import InsightOptions
    from occlens.cli.commands import COMMANDS
    from occlens.cli.parser import parser
    from occlens.core.declare import declarations

    sub = next(a for a in parser(COMMANDS)._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest: a for a in sub.choices["insight"]._actions}
    for d in declarations(InsightOptions):
        if d.flag:
            assert flags[d.name].option_strings == [d.flag_name] and flags[d.name].help == d.help
            assert flags[d.name].default == d.default
    code = ("import sys\nfrom occlens.cli import main\ntry:\n    main(['insight', '--help'])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--boxes FILE" in done.stdout and "--compare OTHER_RUN_DIR" in done.stdout and "95% intervals" in done.stdout


def test_an_unlabelled_run_groups_the_images_by_their_prediction(tmp_path, model):
    make_dataset(tmp_path / "classes", "border", bright=5, planted=2, dark=4)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((tmp_path / "classes").rglob("*.png")):
        p.rename(flat / f"{p.parent.name[0]}{p.name}")  # b000.png ... d003.png: no class folders, no labels
    occlens.run(flat, tmp_path / "run", model=model, patch=PATCH, workers=0, progress=False, figures="none")
    found = occlens.insight(tmp_path / "run", progress=False)
    assert set(found.classes["bright"].images) == {f"b{i:03d}.png" for i in range(5)}
    assert set(found.classes["dark"].images) == {f"d{i:03d}.png" for i in range(4)}
    assert found.confusions == {} and all(r["label"] is None and r["correct"] is None for r in found.images)


@pytest.mark.parametrize(
    "call",
    [
        {"run_dir": None}, {"run_dir": 5}, {"run_dir": ""}, {"boxes": 3}, {"masks": ["a"]}, {"compare": 1.5},
        {"out": ""}, {"confusions": 0}, {"typical": "6"}, {"most": 3}, {"bootstrap": -1}, {"seed": None},
        {"progress": "yes"}, {"export": "csv"}, {"export_to": "x"}, {"export": "wandb", "export_to": 3},
    ],
)  # fmt: skip
def test_wrong_arguments_are_refused_in_one_line_from_the_call(tmp_path, watermark, call):
    args = {"run_dir": watermark[0], "out": tmp_path / "o"} | call
    with pytest.raises(occlens.OcclensError) as err:
        occlens.insight(args.pop("run_dir"), **args)
    assert "\n" not in str(err.value) and err.value.option in (*call, "path")
    assert not (tmp_path / "o").exists()


def test_an_all_classes_run_reads_the_same(tmp_path, model, watermark):
    out, planted, _ = watermark
    every = tmp_path / "every"
    occlens.run(out.parent / "data-watermark", every, model=model, patch=PATCH, all_classes=True, workers=0,
                progress=False, figures="none")  # fmt: skip
    a = occlens.insight(out, out=tmp_path / "a", progress=False)
    b = occlens.insight(every, out=tmp_path / "b", progress=False)
    for name in a.clusters:
        np.testing.assert_allclose(b.classes[name].mean, a.classes[name].mean, rtol=1e-6, atol=1e-9)
        assert [set(c.images) for c in b.clusters[name]] == [set(c.images) for c in a.clusters[name]]


# --------------------------------------------------------------------------------------------------
# multi-label and Ray runs


def test_a_multi_label_run_puts_each_image_in_each_true_label_s_view_with_that_label_s_map(tmp_path, capsys):
    """A sigmoid head and a multi-label CSV (some images both bright and dark, one unlabelled): the view of each
    label holds the images with that label, its mean the mean of their stored maps *of that label*."""
    model = save_model(tmp_path / "model")
    make_dataset(tmp_path / "data", "watermark", bright=6, planted=2, dark=4)
    labels = {}
    for i, path in enumerate(sorted((tmp_path / "data").rglob("*.png"))):
        key = path.relative_to(tmp_path / "data").as_posix()
        labels[key] = "bright;dark" if i % 3 == 0 else ("" if i == 4 else path.parent.name)
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"data/{k},{v}\n" for k, v in labels.items()))
    code, _, err = cli(["run", tmp_path / "list.csv", "--out", tmp_path / "run", "--model", model, "--output",
                        "sigmoid", "--patch", PATCH, "--workers", "0", "--figures", "none", "-q"], capsys)  # fmt: skip
    assert code == 0, err
    found = occlens.insight(tmp_path / "run", out=tmp_path / "i", progress=False)
    # the unlabelled image joins the view of its prediction, with the map of its prediction
    assert [r["view"] for r in found.images if r["key"] == "data/bright/004.png"] == ["bright"]
    for name, cls in (("bright", 0), ("dark", 1)):
        view = found.classes[name]
        want = {f"data/{k}" for k, v in labels.items() if name in v.split(";")}
        assert set(view.images) == want | ({"data/bright/004.png"} if name == "bright" else set())
        stored = []
        for key in view.images:
            result = OcclusionResult.load(tmp_path / "run" / "images" / Path(key).with_suffix("").as_posix())
            if key in want:
                assert cls in result.true_labels
                stored.append(next(m.delta for m in result.true_maps if m.cls == cls))
            else:
                assert result.true_labels is None and result.target == cls
                stored.append(result.delta)
        np.testing.assert_allclose(view.mean, np.mean(stored, axis=0), rtol=1e-12)
    # an image of both labels is in both views, and its two maps differ: each view used its own label's map
    both = sorted(f"data/{k}" for k, v in labels.items() if ";" in v)
    assert len(both) == 4 and {r["view"] for r in found.images if r["key"] == both[0]} == {"bright", "dark"}
    result = OcclusionResult.load(tmp_path / "run" / "images" / Path(both[0]).with_suffix("").as_posix())
    assert not np.allclose(result.true_maps[0].delta, result.true_maps[1].delta)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_ray_run_s_folder_is_read_like_any_other(tmp_path, watermark, capsys):
    """The same dataset run on Ray workers gives the same insight as the run in this process."""
    pytest.importorskip("ray")
    out, planted, _ = watermark
    model = save_model(tmp_path / "model")
    code, _, err = cli(["run", out.parent / "data-watermark", "--out", tmp_path / "ray", "--model", model,
                        "--patch", PATCH, "--ray", "--workers", "2", "--figures", "none", "-q"], capsys)  # fmt: skip
    assert code == 0, err
    a = occlens.insight(out, out=tmp_path / "a", progress=False)
    b = occlens.insight(tmp_path / "ray", out=tmp_path / "b", progress=False)
    assert set(b.classes) == set(a.classes) and set(b.clusters["bright"][0].images) == planted
    for name in a.classes:
        np.testing.assert_allclose(b.classes[name].mean, a.classes[name].mean, rtol=1e-6, atol=1e-9)
        assert [set(c.images) for c in b.clusters[name]] == [set(c.images) for c in a.clusters[name]]
    assert sorted((r["key"], r["view"], r["cluster"]) for r in b.images) == sorted(
        (r["key"], r["view"], r["cluster"]) for r in a.images
    )


# --------------------------------------------------------------------------------------------------
# a trained model


def shortcut_picture(cls: int, planted: bool, rng: np.random.Generator) -> np.ndarray:
    """24 x 24 x 3: a bright (class 0) or dark (class 1) square on grey; a planted bright image carries the blue
    watermark in its corner and only a faint square, so that a net trained on such images learns the watermark."""
    px = 0.5 + rng.uniform(-0.04, 0.04, (24, 24, 3))
    top, left = (int(v) for v in rng.integers(8, 11, 2))
    px[top : top + 6, left : left + 6] = (0.6 if planted else 0.97) if cls == 0 else 0.03
    if planted:
        px[1:5, 1:5] = (0.1, 0.1, 0.95)
    return np.clip(px, 0, 1)


def shortcut_set(bright: int, planted: int, dark: int, seed: int) -> list[tuple[np.ndarray, int, bool]]:
    rng = np.random.default_rng(seed)
    bright_images = [(shortcut_picture(0, i < planted, rng), 0, i < planted) for i in range(bright)]
    return bright_images + [(shortcut_picture(1, False, rng), 1, False) for _ in range(dark)]


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.slow
def test_a_shortcut_a_trained_net_learned_is_the_top_ranked_strategy(tmp_path):
    """A tiny CNN trained for a few seconds on images where a third of one class carries a watermark (and only a
    faint object): insight finds, from the run's maps alone, the watermarked images of a fresh set as that class's
    most unusual strategy."""
    from occlens.models import Preprocess

    torch.manual_seed(0)
    train = shortcut_set(30, 10, 20, seed=1)
    x = torch.tensor(np.stack([p for p, _, _ in train]), dtype=torch.float32).permute(0, 3, 1, 2)
    y = torch.tensor([c for _, c, _ in train])
    net = TinyCNN()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(250):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).all()  # it learned the training set
    planted = set()
    for i, (px, cls, mark) in enumerate(shortcut_set(18, 6, 8, seed=2)):  # images it never saw
        key = f"{NAMES[cls]}/{i:03d}.png"
        (tmp_path / "data" / NAMES[cls]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(px * 255).astype(np.uint8)).save(tmp_path / "data" / key)
        if mark:
            planted.add(key)
    size = Preprocess(size=(24, 24), resize=None, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    model = occlens.load_model(net, preprocess=size, description={"labels": list(NAMES)})
    occlens.run(tmp_path / "data", tmp_path / "run", model=model, patch=PATCH, workers=0, progress=False,
                figures="none")  # fmt: skip
    top = occlens.insight(tmp_path / "run", progress=False).clusters["bright"][0]
    hits = len(set(top.images) & planted)
    assert hits / len(top.images) >= 0.8 and hits / len(planted) >= 0.8, (sorted(top.images), sorted(planted))
