"""``occlens evaluate``: the table, the CSV and the curves, on a tiny TorchScript model and on the bundled photos."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet
from PIL import Image

import occlens
from occlens import metrics
from occlens.cli import main
from occlens.core.image import read_image
from occlens.core.samples import samples
from occlens.models import load_model

SIZE = 24
TINY = ["--input-size", str(SIZE), "--resize", str(SIZE), "--patch", "6", "--steps", "8"]


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyConvNet()).save(str(path))
    return path


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    out = []
    for i, (w, h) in enumerate([(40, 30), (30, 50)]):
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


def test_evaluate_writes_a_table_csv_and_png(tiny, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["evaluate", *photos, "--model", tiny, *TINY, "--out", out], capsys)
    assert code == 0, err
    rows = read_rows(out / "evaluate.csv")
    assert [(r["image"], r["method"]) for r in rows] == [
        (p.stem, m) for p in photos for m in ("occlusion", "saliency", "random")
    ]
    assert {r["first"] for r in rows if r["method"] == "occlusion"} == {"lowest"}  # negative δL supports Q
    assert {r["first"] for r in rows if r["method"] != "occlusion"} == {"highest"}
    for r in rows:
        assert 0 <= float(r["deletion_auc"]) <= 1 and 0 <= float(r["insertion_auc"]) <= 1
        assert r["steps"] == "8"
    with Image.open(out / "evaluate.png") as png:
        png.load()
        assert png.format == "PNG" and png.height > 600  # a 320-pixel row of curves per image
    for m in ("occlusion", "saliency", "random"):
        assert f"| **mean of 2** | | {m} |" in stdout
    assert "deletion AUC" in stdout and "insertion AUC" in stdout


def test_the_csv_holds_what_the_library_computes(tiny, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["evaluate", photos[0], "--model", tiny, *TINY, "--out", out,
                        "--methods", "occlusion,gradient_x_input"], capsys)  # fmt: skip
    assert code == 0, err
    rows = {r["method"]: r for r in read_rows(out / "evaluate.csv")}
    model = load_model(tiny, description={"input_size": SIZE, "resize": SIZE})
    image = model.preprocess(read_image(photos[0]))
    maps = {
        "occlusion": (occlens.explain(model.module, image, patch=6).pixel_map, "lowest"),
        "gradient_x_input": (occlens.saliency(model.module, image, method="gradient_x_input"), "highest"),
    }
    for method, (pixel_map, first) in maps.items():
        deletion = metrics.deletion_auc(model.module, image, pixel_map, first=first, steps=8)
        insertion = metrics.insertion_auc(model.module, image, pixel_map, first=first, steps=8)
        assert float(rows[method]["deletion_auc"]) == pytest.approx(deletion.auc, abs=1e-6)
        assert float(rows[method]["insertion_auc"]) == pytest.approx(insertion.auc, abs=1e-6)
        assert int(rows[method]["predicted"]) == deletion.cls


def test_samples_flag_evaluates_the_bundled_photos(tmp_path, capsys):
    code, stdout, err = run(["evaluate", "--samples", "--methods", "random", "--steps", "2", "--out", tmp_path],
                            capsys)  # fmt: skip
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


def test_an_unknown_method_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "x.png", "--methods", "occlusion,lime"])
    assert exit_.value.code == 2
    assert "lime" in capsys.readouterr().err
