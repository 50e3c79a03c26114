"""``occlens evaluate``: the tables, the CSVs and the figure, on a tiny TorchScript model and on the bundled
photos; a run's DIR evaluated from the maps it wrote; the options' errors."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet
from PIL import Image
from test_runs import colour_image, make_model

import occlens
from occlens import metrics
from occlens.cli import main
from occlens.core.grid import Grid
from occlens.core.image import read_image
from occlens.core.result import ClassMap, OcclusionResult, frozen_array
from occlens.core.samples import samples
from occlens.models import load_model

SIZE = 24
TINY = ["--input-size", str(SIZE), "--resize", str(SIZE), "--patch", "6", "--steps", "8"]
SCORES = ("morf_auc", "lerf_auc", "srg")


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyConvNet()).save(str(path))
    return path


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    out = []
    for i, (w, h) in enumerate([(40, 30), (30, 50), (36, 36)]):
        pixels = np.random.default_rng(i).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out.append(tmp_path / f"photo{i}.png")
        Image.fromarray(pixels).save(out[-1])
    return out


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tiny_model(path: Path):
    return load_model(path, description={"input_size": SIZE, "resize": SIZE})


def test_evaluate_writes_the_tables_both_csvs_and_the_figure(tiny, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["evaluate", *photos[:2], "--model", tiny, *TINY, "--out", out], capsys)
    assert code == 0, err
    rows = read_rows(out / "evaluate.csv")
    methods = ("occlusion", "saliency", "random")
    assert [(r["image"], r["method"]) for r in rows] == [(p.stem, m) for p in photos[:2] for m in methods]
    assert {r["first"] for r in rows if r["method"] == "occlusion"} == {"lowest"}  # negative δL supports Q
    assert {r["first"] for r in rows if r["method"] != "occlusion"} == {"highest"}
    assert {(r["removal"], r["granularity"], r["steps"]) for r in rows} == {("road", "pixel", "8")}  # the defaults
    for r in rows:
        assert 0 <= float(r["morf_auc"]) <= 1 and 0 <= float(r["lerf_auc"]) <= 1
        assert float(r["srg"]) == pytest.approx(float(r["lerf_auc"]) - float(r["morf_auc"]), abs=2e-6)
        assert r["target"] == r["predicted"]
    summary = read_rows(out / "summary.csv")
    assert [(s["score"], s["method"], s["versus"]) for s in summary] == [
        (score, *pair) for score in ("srg", "morf_auc", "lerf_auc")
        for pair in [(m, "") for m in methods] + [("occlusion", "saliency"), ("occlusion", "random"),
                                                   ("saliency", "random")]
    ]  # fmt: skip
    for s in summary:
        mine = [float(r[s["score"]]) for r in rows if r["method"] == s["method"]]
        if s["versus"]:
            mine = np.subtract(mine, [float(r[s["score"]]) for r in rows if r["method"] == s["versus"]])
            assert float(s["p_value"]) in (0.5, 1.0)  # 2 images: the sign-flip test's only possible values
        assert float(s["mean"]) == pytest.approx(np.mean(mine), abs=2e-6) and s["images"] == "2"
        # resampling 2 values: each alone a quarter of the time, so the 95% interval is exactly [min, max]
        assert (float(s["ci_low"]), float(s["ci_high"])) == pytest.approx((min(mine), max(mine)), abs=2e-6)
    with Image.open(out / "evaluate.png") as png:
        png.load()
        assert png.format == "PNG" and png.height > 1000  # 4 rows: intervals, mean curves, 2 images
    for m in methods:
        assert f"| **mean of 2** [95% CI] | | {m} |" in stdout
    assert "| occlusion − random |" in stdout and "SRG" in stdout and "ROAD" in stdout
    assert "summary.csv" in stdout


@pytest.mark.parametrize(("removal", "granularity"), [("blur", "pixel"), ("gray", "window")])
def test_the_csv_holds_what_the_library_computes(tiny, photos, tmp_path, capsys, removal, granularity):
    out = tmp_path / "out"
    code, _, err = run(["evaluate", photos[0], "--model", tiny, *TINY, "--out", out, "--removal", removal,
                        "--granularity", granularity, "--methods", "occlusion,gradient_x_input,random"],
                       capsys)  # fmt: skip
    assert code == 0, err
    rows = {r["method"]: r for r in read_rows(out / "evaluate.csv")}
    model = tiny_model(tiny)
    image = model.preprocess(read_image(photos[0]))
    segments = Grid.build(SIZE, SIZE, 6) if granularity == "window" else None
    maps = {
        "occlusion": (occlens.explain(model.module, image, patch=6).pixel_map, "lowest"),
        "gradient_x_input": (occlens.saliency(model.module, image, method="gradient_x_input"), "highest"),
        "random": (metrics.random_map(SIZE, SIZE, 0), "highest"),  # --seed's default
    }
    for method, (pixel_map, first) in maps.items():
        c = metrics.removal_curves(model.module, image, pixel_map, first=first, removal=removal, segments=segments,
                                   steps=8)  # fmt: skip
        assert rows[method]["removal"] == removal and rows[method]["granularity"] == granularity
        for score, value in (("morf_auc", c.morf.auc), ("lerf_auc", c.lerf.auc), ("srg", c.srg)):
            assert float(rows[method][score]) == pytest.approx(value, abs=1e-6)
        assert int(rows[method]["predicted"]) == c.morf.cls


def test_a_set_of_images_gives_each_images_own_rows_and_the_summary_its_statistics(tiny, photos):
    model = tiny_model(tiny)
    every = occlens.evaluate(photos, None, model, methods="occlusion,random", steps=6, patch=6, bootstrap=500)
    alone = [occlens.evaluate(p, None, model, methods="occlusion,random", steps=6, patch=6) for p in photos]
    assert list(every.rows) == [row for e in alone for row in e.rows]  # batch and one by one agree
    values = {m: np.array([r["srg"] for r in every.rows if r["method"] == m]) for m in ("occlusion", "random")}
    (pair,) = [s for s in every.summary if s["score"] == "srg" and s["versus"]]
    assert (pair["method"], pair["versus"], pair["images"]) == ("occlusion", "random", 3)
    d = values["occlusion"] - values["random"]
    assert pair["mean"] == pytest.approx(d.mean())
    assert (pair["ci_low"], pair["ci_high"]) == metrics.bootstrap_interval(d, 500, 0)
    assert pair["p_value"] == metrics.paired_test(values["occlusion"], values["random"])
    assert str(every).count("mean of 3") == 2 and "3 images cannot give p < 0.25" in str(every)


def test_bootstrap_0_leaves_the_intervals_out(tiny, photos, tmp_path, capsys):
    code, stdout, err = run(["evaluate", *photos[:2], "--model", tiny, *TINY, "--methods", "random,saliency",
                             "--bootstrap", "0", "--out", tmp_path / "out"], capsys)  # fmt: skip
    assert code == 0, err
    summary = read_rows(tmp_path / "out" / "summary.csv")
    assert {s["ci_low"] for s in summary} == {""} and {s["ci_high"] for s in summary} == {""}
    assert {s["p_value"] for s in summary if s["versus"]} <= {"0.500000", "1.000000"}  # exact: no resampling needed


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--removal", "inpaint"], ["inpaint", "gray, blur, road"]),
        (["--granularity", "cell"], ["cell", "window", "pixel"]),
        (["--bootstrap", "-1"], ["-1", "--bootstrap"]),
        (["--steps", "0"], ["0", "--steps"]),
        (["--methods", "occlusion,lime"], ["lime", "occlusion, saliency"]),
    ],
)
def test_bad_options_are_one_line_errors_before_anything_is_written(tiny, photos, tmp_path, capsys, flags, named):
    out = tmp_path / "never"
    try:  # argparse refuses some (its types are the library's checks), the library the others
        code = main([str(a) for a in ["evaluate", photos[0], "--model", tiny, *TINY, *flags, "--out", out]])
    except SystemExit as stop:
        code = stop.code
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("occlens: error: ") and all(n in line for n in named), line
    assert not out.exists()


def test_samples_flag_evaluates_the_bundled_photos(tmp_path, capsys):
    code, _, err = run(["evaluate", "--samples", "--methods", "random", "--steps", "2", "--out", tmp_path], capsys)
    assert code == 0, err
    rows = read_rows(tmp_path / "evaluate.csv")
    assert [r["image"] for r in rows] == [s.path.stem for s in samples()]
    assert {r["predicted_name"] for r in rows} == {"tiger cat", "espresso", "tripod"}


def test_a_bad_image_is_reported_and_the_rest_still_run(tiny, photos, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, err = run(["evaluate", broken, photos[0], "--model", tiny, *TINY, "--methods", "random", "--out", out],
                       capsys)  # fmt: skip
    assert code == 2
    assert err.strip().startswith("occlens: error: ") and "broken.png" in err and len(err.strip().splitlines()) == 1
    assert [r["image"] for r in read_rows(out / "evaluate.csv")] == ["photo0"]


def test_no_images_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run(["evaluate", "--out", tmp_path], capsys)
    assert code == 2
    assert err.strip().startswith("occlens: error: ") and "--samples" in err and len(err.strip().splitlines()) == 1


# -- a run's DIR -------------------------------------------------------------------------------------

RUN = ["--patch", "8"]  # the colour model's 32 x 32 input: 4 x 4 windows


@pytest.fixture
def explained(tmp_path, capsys):
    """A run of the colour model over 3 images, explaining class 1 (green) for all: (DIR, model file, images)."""
    model = make_model(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        colour_image(i, seed=i).save(data / f"img{i}.png")
    code, _, err = run(["run", data, "--model", model, *RUN, "--target", "1", "--workers", "0", "--out",
                        tmp_path / "run"], capsys)  # fmt: skip
    assert code == 0, err
    return tmp_path / "run", model, sorted(data.iterdir())


def test_a_runs_dir_is_evaluated_from_the_maps_it_wrote(explained, tmp_path, capsys):
    folder, model_path, images = explained
    # doctor one saved map: a recomputed map would not be this one
    stem = folder / "images" / "img1"
    saved = OcclusionResult.load(stem)
    flipped = -saved.target_map.delta
    doctored = ClassMap(saved.target, saved.target_map.loss, saved.target_map.occluded_loss, frozen_array(flipped),
                        frozen_array(saved.grid.pixel_map(flipped)))  # fmt: skip
    replace(saved, target_map=doctored).save(stem)
    out = tmp_path / "ev"
    code, _, err = run(["evaluate", folder, "--model", model_path, "--methods", "occlusion,saliency", "--steps", "4",
                        "--out", out], capsys)  # fmt: skip
    assert code == 0, err
    rows = read_rows(out / "evaluate.csv")
    assert [(r["image"], r["method"]) for r in rows] == [(f"img{i}", m) for i in range(3) for m in
                                                         ("occlusion", "saliency")]  # fmt: skip
    model = occlens.load_model(model_path)
    for r in rows:
        image = model.preprocess(read_image(images[int(r["image"][-1])]))
        result = OcclusionResult.load(folder / "images" / r["image"])
        assert r["target"] == "1" and int(r["predicted"]) == result.predicted  # the run's class, not Q
        pixel_map, first = ((result.pixel_map, "lowest") if r["method"] == "occlusion" else
                            (occlens.saliency(model.module, image, 1), "highest"))  # fmt: skip
        c = metrics.removal_curves(model.module, image, pixel_map, first=first, target=1, steps=4,
                                   segments=result.grid)  # fmt: skip
        assert float(r["srg"]) == pytest.approx(c.srg, abs=1e-6), r
    fresh = occlens.explain(model, images[1], target=1, patch=8).pixel_map  # what recomputing would have used
    np.testing.assert_allclose(OcclusionResult.load(stem).pixel_map, -fresh, atol=1e-6)
    image = model.preprocess(read_image(images[1]))
    recomputed = metrics.removal_curves(model.module, image, fresh, first="lowest", target=1, steps=4,
                                        segments=Grid.build(32, 32, 8))  # fmt: skip
    (row,) = [r for r in rows if (r["image"], r["method"]) == ("img1", "occlusion")]
    assert abs(float(row["srg"]) - recomputed.srg) > 1e-3


def test_a_runs_dir_needs_its_own_model_and_comes_alone(explained, tmp_path, capsys):
    folder, model_path, images = explained
    other = make_model(tmp_path / "other", scale=2.0)
    plain = tmp_path / "plain"
    plain.mkdir()
    cases = [
        ([folder, "--model", other], ["another model", str(folder)]),
        ([folder, images[0], "--model", model_path], ["is a folder", "1 other"]),
        ([plain, "--model", model_path], ["not a dataset run", "manifest.sqlite"]),
    ]
    for argv, named in cases:
        code, _, err = run(["evaluate", *argv, "--out", tmp_path / "never"], capsys)
        (line,) = err.strip().splitlines()
        assert code == 2 and all(n in line for n in named), line
        assert not (tmp_path / "never").exists()


def test_an_image_changed_since_the_run_fails_alone(explained, tmp_path, capsys):
    folder, model_path, images = explained
    colour_image(0, seed=9).save(images[1])  # img1 was green, now red: P(green) falls
    code, _, err = run(["evaluate", folder, "--model", model_path, "--methods", "random", "--steps", "2", "--out",
                        tmp_path / "ev"], capsys)  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "img1.png" in line and "changed since the run" in line
    assert [r["image"] for r in read_rows(tmp_path / "ev" / "evaluate.csv")] == ["img0", "img2"]
    shutil.rmtree(tmp_path / "ev")
