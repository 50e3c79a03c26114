"""``occlens insight --export fiftyone|wandb``: each image with its δL map, read back with the other tool's own code
(FiftyOne's dataset importer, without its database; W&B's offline run files). Skipped where the optional package is
not installed (``pip install "occlens[export]"``); where it is not, the refusal names the pip command."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from shortcuts import make_dataset, save_model

import occlens
from occlens.cli import main
from occlens.core.errors import ConfigError
from occlens.core.result import OcclusionResult

HAVE = {name: importlib.util.find_spec(name) is not None for name in ("fiftyone", "wandb")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = occlens.load_model(str(save_model(root / "model")), device="cpu")
    make_dataset(root / "data", "watermark", bright=6, planted=2, dark=3)
    occlens.run(root / "data", root / "run", model=model, patch=4, workers=0, progress=False, figures="none")
    return root / "run"


def stored_pixels(run, key: str) -> np.ndarray:
    """The image's explained δL map at the input geometry, from the run's stored result."""
    result = OcclusionResult.load(run / "images" / key.removesuffix(".png"))
    return result.grid.pixel_map(result.delta)


@pytest.mark.skipif(not HAVE["fiftyone"], reason="fiftyone not installed (pip install 'occlens[export]')")
def test_the_fiftyone_folder_reads_back_with_fiftyones_importer(run, tmp_path):
    from fiftyone.utils.data.importers import LegacyFiftyOneDatasetImporter

    found = occlens.insight(run, out=tmp_path / "i", export="fiftyone", export_to=tmp_path / "fo", progress=False)
    assert found.exported == tmp_path / "fo"
    rows = {r["key"]: r for r in found.images}
    importer = LegacyFiftyOneDatasetImporter(str(tmp_path / "fo"))
    with importer:
        samples = list(importer)
    assert sorted(s["key"] for s in samples) == sorted(rows) and len(samples) == 9
    for s in samples:
        key = s["key"]
        heat = s["delta"]
        pixels = np.load(heat.map_path)  # resolved by the importer against the folder
        expected = stored_pixels(run, key)  # a labelled run: the map of the true class, which the run explained
        np.testing.assert_allclose(pixels, expected, rtol=1e-6)
        limit = np.abs(expected).max()
        assert heat.range == pytest.approx([-limit, limit], rel=1e-6)  # symmetric: 0 mid-scale
        assert s["ground_truth"].label == key.split("/")[0]
        assert s["prediction"].label in ("bright", "dark") and 0 < s["prediction"].confidence <= 1
        assert s["insight_cluster"] == rows[key]["cluster"] and s["insight_view"] == rows[key]["view"]
        assert s.filepath.endswith(key.split("/")[1]) and (run.parent / "data" / key).samefile(s.filepath)
    top = found.clusters["bright"][0]
    assert {s["key"] for s in samples if s["insight_view"] == "bright" and s["insight_cluster"] == 0} == set(top.images)


@pytest.mark.skipif(not HAVE["wandb"], reason="wandb not installed (pip install 'occlens[export]')")
def test_the_wandb_export_writes_an_offline_run_with_the_table(run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    found = occlens.insight(run, out=tmp_path / "i", export="wandb", export_to=tmp_path / "wb", progress=False)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))  # the run's record, for `wandb sync`
    tables = list(runs[0].rglob("insight_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    assert columns[:3] == ["key", "photo", "delta"]
    data = {row[0]: dict(zip(columns, row, strict=True)) for row in table["data"]}
    assert set(data) == {r["key"] for r in found.images}
    for key, row in data.items():
        assert row["view"] == key.split("/")[0] and row["true"] == key.split("/")[0]
        assert row["photo"] == row["delta"] == "Image"
    # the table's images (photo and overlay per image) staged for `wandb sync` inside the folder
    staged = [p for p in (tmp_path / "wb" / "data").rglob("*") if p.is_file()]
    assert len(staged) >= 2 * len(data)


def test_the_overlay_is_the_photo_under_the_reports_colours():
    from occlens.app.insight_export import overlay
    from occlens.present.report.colours import colour_table

    pixels = np.zeros((6, 8))
    pixels[1:3, 2:5] = -2.0  # supported the class: the table's first colour (red)
    pixels[4, 6] = 1.0  # argued against it: half way to blue
    got = overlay(None, pixels, None).astype(int)  # no photo: grey under the colours
    table = colour_table().astype(int)
    assert (np.abs(got[1, 2] - np.rint((128 + table[0]) / 2)) <= 1).all()
    assert (np.abs(got[0, 0] - np.rint((128 + table[128]) / 2)) <= 1).all()
    assert (np.abs(got[4, 6] - np.rint((128 + table[192]) / 2)) <= 1).all()


@pytest.mark.parametrize("kind", ["fiftyone", "wandb"])
def test_a_missing_extra_is_one_line_with_the_pip_command_and_nothing_written(run, tmp_path, kind):
    if HAVE[kind]:
        pytest.skip(f"{kind} is installed: its refusal cannot be seen here")
    with pytest.raises(ConfigError) as err:
        occlens.insight(run, out=tmp_path / "i", export=kind, export_to=tmp_path / "x", progress=False)
    assert "\n" not in str(err.value) and f'pip install "occlens[export]" (or pip install {kind})' in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--export", "csv"], "invalid choice"),
        (["--export-to", "{tmp}/x"], "--export-to needs --export"),
        (["--export", "fiftyone", "--export-to", "{tmp}/full"], "{missing_or_full}"),
    ],
)
def test_bad_export_flags_exit_2_with_one_line(run, tmp_path, capsys, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    if message == "{missing_or_full}":
        message = "exists and is not empty" if HAVE["fiftyone"] else "pip install"
    try:
        code = main(["insight", str(run), "--out", str(tmp_path / "i"), "-q", *[a.format(tmp=tmp_path) for a in args]])
    except SystemExit as stop:  # argparse's own refusals (an unknown choice)
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
