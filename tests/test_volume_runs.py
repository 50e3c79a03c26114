"""`occlens run` over NIfTI volumes with a 3-D model: each volume's files (its voxel map as NIfTI on the input's
grid), the manifest, resume, a bad file as one line, labels from a CSV, the report's slice slider and card, and a
volume result's plot() and to_nifti().

The model is a 3-D CNN whose class 1 ("lesion") wins when the volume's mean is above 0.23; the phantoms are 0.2
everywhere, and those of class 1 hold a bright box (0.9) that fills exactly one window of the partition used here
(depth 4-8, rows 8-16, columns 10-20 of a 12 x 16 x 20 volume, windows 4 x 8 x 10): occluding it with gray lowers
the mean, so that window's δL is the most negative, and its centre depth (5) is the card's slice.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import needs_chromium, open_page

import occlens
from occlens import OcclusionResult
from occlens.app.job import explain_files
from occlens.app.options import Options
from occlens.cli import main
from occlens.core.settings import Settings

nib = pytest.importorskip("nibabel")

AFFINE = np.array([[-0.8, 0, 0, 4], [0, 0.8, 0, -2], [0, 0, 2.0, 1], [0, 0, 0, 1]])  # of (i, j, k) = (w, h, d)
SHAPE = (12, 16, 20)  # D x H x W
PATCH = ["--patch", "4,8,10"]  # a partition: 3 x 2 x 2 windows
LESION = (slice(4, 8), slice(8, 16), slice(10, 20))  # window (1, 1, 1)
CARD = 5  # the centre depth of that window


class Lesion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-40.0], [40.0]]))
            self.head.bias.copy_(torch.tensor([9.2, -9.2]))

    def forward(self, x):
        return self.head(self.pool(self.conv(x)).flatten(1))


def phantom(lesion: bool, seed: int) -> np.ndarray:
    """D x H x W in [0, 1]: 0.2 with a little noise, the bright box where ``lesion``."""
    v = 0.2 + 0.01 * np.random.default_rng(seed).random(SHAPE)
    if lesion:
        v[LESION] = 0.9
    return v.astype(np.float32)


def save_nifti(volume: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), AFFINE), path)  # D x H x W -> (i, j, k)
    return path


@pytest.fixture(scope="module")
def model3d(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "lesion3d.pt"
    torch.jit.script(Lesion().eval()).save(str(path))
    return path


def make_volumes(folder: Path, bad: bool = True) -> dict[str, int]:
    """s0..s3 (s1 and s3 with the lesion) and, with ``bad``, a file that is no NIfTI; their classes."""
    folder.mkdir(parents=True)
    truth = {}
    for i in range(4):
        save_nifti(phantom(i % 2 == 1, i), folder / f"s{i}.nii.gz")
        truth[f"s{i}"] = i % 2
    if bad:
        (folder / "bad.nii.gz").write_bytes(b"not a NIfTI file")
    return truth


def cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model3d):
    """A run from a CSV with labels (one of them wrong, s3 labelled 0): (out folder, its data folder, the run)."""
    root = tmp_path_factory.mktemp("volume-run")
    truth = make_volumes(root / "data")
    truth["s3"] = 0  # a mistake: its figure is drawn (figures: mistakes)
    with open(root / "data" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([[f"{k}.nii.gz", v] for k, v in truth.items()] + [["bad.nii.gz", 0]])
    code, printed, err = cli(["run", root / "data" / "labels.csv", "--out", root / "out", "--model", model3d, *PATCH,
                              "-q"])  # fmt: skip
    return root / "out", root / "data", code, printed, err


@pytest.mark.timeout(300)
def test_a_run_writes_each_volume_s_files_and_its_map_on_the_input_s_grid(finished):
    out, data, code, printed, err = finished
    assert code == 2  # the bad file
    names = {p.name for p in (out / "images").iterdir()}
    for i in range(4):
        assert {f"s{i}.json", f"s{i}.npz", f"s{i}.jpg", f"s{i}.nii.gz"} <= names
    assert ("s3.png" in names) and not {"s0.png", "s1.png", "s2.png"} & names  # the mistake's figure only
    assert not any(n.startswith("bad") for n in names)
    for i in range(4):
        result = OcclusionResult.load(out / "images" / f"s{i}")
        assert result.predicted == i % 2 and result.pixel_map.shape == SHAPE
        assert result.delta.shape == (3, 2, 2) and result.preview.shape == SHAPE  # small: kept whole
        written = nib.load(out / "images" / f"s{i}.nii.gz")
        np.testing.assert_allclose(written.affine, AFFINE)  # the input's grid
        assert written.shape == SHAPE[::-1]
        np.testing.assert_allclose(np.asarray(written.dataobj), result.pixel_map.transpose(2, 1, 0), atol=1e-6)
        assert json.loads((out / "images" / f"s{i}.json").read_text())["meta"]["input"]["source"] == f"s{i}.nii.gz"
    lesion = OcclusionResult.load(out / "images" / "s1")
    assert np.unravel_index(np.argmin(lesion.delta), lesion.delta.shape) == (1, 1, 1)  # the lesion's window


def test_the_manifest_and_summary_hold_the_labels_and_the_bad_file_in_one_line(finished):
    out, _, code, printed, err = finished
    from occlens.app.manifest import Manifest

    with Manifest(out) as manifest:
        records = manifest.records()
    assert set(records) == {"s0.nii.gz", "s1.nii.gz", "s2.nii.gz", "s3.nii.gz", "bad.nii.gz"}
    assert [records[f"s{i}.nii.gz"].label for i in range(4)] == [0, 1, 0, 0]
    assert [records[f"s{i}.nii.gz"].correct for i in range(4)] == [True, True, True, False]
    bad = records["bad.nii.gz"]
    assert bad.status == "failed" and "\n" not in bad.error and "is not a NIfTI file" in bad.error
    assert "accuracy: 3/4 = 75.0%" in printed and "Traceback" not in err


@pytest.mark.timeout(300)
def test_a_run_resumes_redoing_only_what_is_missing(tmp_path, model3d):
    make_volumes(tmp_path / "data")
    kw = dict(model=str(model3d), patch=(4, 8, 10), progress=False, workers=0)
    first = occlens.run(tmp_path / "data", tmp_path / "out", **kw)
    assert first.done_now == 5 and first.summary.explained == 4 and len(first.summary.failed) == 1
    assert "is not a NIfTI file" in first.summary.failed[0].error
    images = tmp_path / "out" / "images"
    before = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    (images / "s2.nii.gz").unlink()  # a volume's map gone: it is done again, and only it
    (tmp_path / "data" / "bad.nii.gz").unlink()
    again = occlens.run(tmp_path / "data", tmp_path / "out", **kw)
    assert again.done_now == 1 and again.summary.explained == 4 and not again.summary.failed
    after = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    assert {n for n in after if after[n] != before.get(n)} == {"s2.json", "s2.npz", "s2.jpg", "s2.nii.gz"}
    third = occlens.run(tmp_path / "data", tmp_path / "out", **kw)  # every volume done: answered from the manifest
    assert third.done_now == 0 and third.summary.explained == 4


@pytest.mark.timeout(300)
def test_a_ct_in_hounsfield_units_runs_with_an_intensity_window(tmp_path, model3d):
    (tmp_path / "ct").mkdir()
    hu = np.round(phantom(True, 0) * 400 - 160).astype(np.int16)  # 0.2 -> -80, 0.9 -> 200 (soft tissue: -160..240)
    save_nifti(hu, tmp_path / "ct" / "scan.nii")
    code, printed, _ = cli(["run", tmp_path / "ct", "--out", tmp_path / "raw", "--model", model3d, *PATCH])
    failure = [line for line in printed.splitlines() if line.strip().startswith("scan.nii:")]
    assert code == 2 and len(failure) == 1 and "declare an intensity window" in failure[0]  # that volume, one line
    code, _, err = cli(["run", tmp_path / "ct", "--out", tmp_path / "out", "--model", model3d, *PATCH,
                        "--intensity", "ct-soft-tissue", "-q"])  # fmt: skip
    assert code == 0, err
    result = OcclusionResult.load(tmp_path / "out" / "images" / "scan")
    assert result.meta["input"]["intensity"]["name"] == "ct-soft-tissue" and result.predicted == 1
    assert (tmp_path / "out" / "images" / "scan.nii.gz").is_file()  # scan.nii: the stem scan
    # the window is part of what the outputs depend on: another one on the same folder is refused
    code, _, err = cli(["run", tmp_path / "ct", "--out", tmp_path / "out", "--model", model3d, *PATCH,
                        "--intensity", "ct-brain", "-q"])  # fmt: skip
    assert code == 2 and "intensity" in err and len(err.strip().splitlines()) == 1


def test_a_volume_result_plots_its_slices_and_writes_nifti(tmp_path):
    volume = occlens.Volume(phantom(True, 3), affine=np.array(AFFINE)[:, [2, 1, 0, 3]])
    result = occlens.explain(Lesion().eval(), volume, patch=(4, 8, 10))
    figure = result.plot()
    assert type(figure).__name__ == "Figure" and len(figure.axes) >= 3
    assert result.preview.dtype == np.uint8 and result.preview.shape == SHAPE
    written = nib.load(result.to_nifti(tmp_path / "map.nii.gz"))
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_allclose(np.asarray(written.dataobj).transpose(2, 1, 0), result.pixel_map, atol=1e-6)
    back = occlens.read_volume(tmp_path / "map.nii.gz")  # read back on the same grid
    np.testing.assert_allclose(back.affine, volume.affine)
    np.testing.assert_allclose(back.array[0].numpy(), result.pixel_map, atol=1e-6)
    same = occlens.read_volume(occlens.volumes.to_nifti(result, tmp_path / "same.nii"))  # the function delegates
    assert np.array_equal(same.array.numpy(), back.array.numpy()) and np.array_equal(same.affine, back.affine)
    result.save(tmp_path / "r")
    loaded = OcclusionResult.load(tmp_path / "r")
    assert np.array_equal(loaded.preview, result.preview) and type(loaded.plot()).__name__ == "Figure"
    big = occlens.explain(Lesion().eval(), occlens.Volume(np.zeros((80, 130, 9), np.float32)), patch=(40, 65, 9))
    assert big.preview.shape == (64, 64, 9)  # a small copy, not the scan
    flat = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(occlens.ConfigError, match="to_nifti writes a volume's voxel map"):
        occlens.explain(flat, torch.rand(3, 8, 8), patch=4).to_nifti(tmp_path / "x.nii")


def test_an_output_the_filesystem_refuses_reads_the_same_for_volumes_and_images(tmp_path, model3d):
    from occlens.models import load_model

    save_nifti(phantom(False, 0), tmp_path / "v.nii.gz")
    (tmp_path / "out" / "v.nii.gz").mkdir(parents=True)  # where its map goes: a folder
    errors = []
    rows, got = explain_files(load_model(str(model3d)), [(tmp_path / "v.nii.gz", None)], tmp_path / "out",
                              Settings(patch=(4, 8, 10)), Options(progress=False), errors.append)  # fmt: skip
    assert not rows and got == errors and len(got) == 1
    assert str(got[0]).startswith(f"{tmp_path / 'v.nii.gz'}: cannot write its outputs: ")


# --------------------------------------------------------------------------------------------------
# the report, in a real browser


def colours(values: np.ndarray, limit: float) -> np.ndarray:
    from occlens.present.colours import colour_table

    index = np.clip(np.floor((values / limit + 1) / 2 * 256), 0, 255).astype(int)
    return colour_table()[index]


def data_file(out: Path, key: str) -> tuple[str, dict]:
    index = (out / "report" / "index.js").read_text()
    entries = json.loads(index[index.index("(") + 1 : index.rindex(")")])["entries"]
    ident = dict(zip(entries["key"], entries["id"], strict=True))[key]
    text = (out / "report" / "data" / f"{ident}.js").read_text()
    return ident, json.loads(text[text.index(",") + 1 : text.rindex(")")])


def decoded(m: dict, count: int) -> np.ndarray:
    q = np.frombuffer(base64.b64decode(m["q"]), "<u2").astype(np.float64)[:count]
    return m["lo"] + q * ((m["hi"] - m["lo"]) / 65535)


def cells(page) -> list[list[int]]:
    """The RGB at the centre of each window of the first map's δL canvas."""
    return page.evaluate(
        """() => {
            const canvas = document.querySelector("figure.map-row canvas.map");
            const size = Number(canvas.dataset.cell), w = canvas.width, rows = canvas.height / size, cols = w / size;
            const data = canvas.getContext("2d").getImageData(0, 0, w, canvas.height).data, out = [];
            for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
                const o = 4 * ((r * size + size / 2) * w + c * size + size / 2);
                out.push([data[o], data[o + 1], data[o + 2]]);
            }
            return out;
        }"""
    )


@needs_chromium
@pytest.mark.timeout(300)
def test_the_image_page_slides_through_the_depth(finished, browser):
    out = finished[0]
    ident, data = data_file(out, "s1.nii.gz")
    v, g = data["volume"], data["grid"]
    assert (v["depth"], v["planes"], v["patch"], v["stride"], v["card"]) == (12, 3, 4, 4, CARD)
    assert (g["rows"], g["cols"], g["patch"], g["height"], g["width"]) == (2, 2, [8, 10], 16, 20)
    result = OcclusionResult.load(out / "images" / "s1")
    values = decoded(data["maps"][0], 12).reshape(3, 2, 2)
    np.testing.assert_allclose(values, result.delta, atol=(result.delta.max() - result.delta.min()) / 65535)
    page, problems = open_page(browser, (out / "report" / "image.html").as_uri() + f"#id={ident}")
    assert page.input_value("#depth") == str(CARD)  # opens at the most negative window's slice
    for depth in (CARD, 0, 11, 6):
        page.fill("#depth", str(depth))  # as a user drags it: an input event
        page.wait_for_selector(f".slices[data-depth='{depth}']")
        got = np.array(cells(page))
        # a partition: each window's cell is the voxel map's value at its centre in this slice
        centres = result.pixel_map[depth][4::8, 5::10]
        assert np.abs(centres - values[depth // 4]).max() < 1e-4
        assert np.array_equal(got, colours(values[depth // 4], data["limit"]).reshape(-1, 3)), depth
    assert "slice 6 of 0–11" in page.text_content(".depth-value")
    assert page.locator("figure.map-row").count() == 1 and page.locator("canvas.overlay").count() == 1
    # the slice of the preview under the map: the lesion is bright in slice 6, absent from slice 0
    bright = page.evaluate(
        """() => { const c = document.querySelector("canvas.image"), d = c.getContext("2d").getImageData(
            Math.floor(c.width * 0.75), Math.floor(c.height * 0.75), 1, 1).data; return d[0]; }"""
    )
    page.fill("#depth", "0")
    page.wait_for_selector(".slices[data-depth='0']")
    dark = page.evaluate(
        """() => { const c = document.querySelector("canvas.image"), d = c.getContext("2d").getImageData(
            Math.floor(c.width * 0.75), Math.floor(c.height * 0.75), 1, 1).data; return d[0]; }"""
    )
    assert bright > 200 > 80 > dark
    assert not problems, problems


@needs_chromium
@pytest.mark.timeout(300)
def test_the_gallery_card_shows_the_slice_through_the_most_negative_window(finished, browser):
    out = finished[0]
    _, data = data_file(out, "s1.nii.gz")
    page, problems = open_page(browser, (out / "report" / "index.html").as_uri() + "#view=map")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#gallery .card')).every(c => "
        "(c.querySelector('canvas.cardmap') || {dataset: {}}).dataset.state === 'drawn')"
    )
    card = page.locator("#gallery .card[title='s1.nii.gz'] canvas.cardmap").evaluate(
        "c => ({w: c.width, h: c.height, rgba: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data)})"
    )
    got = np.array(card["rgba"], np.uint8).reshape(card["h"], card["w"], 4).astype(int)
    values = decoded(data["maps"][0], 12).reshape(3, 2, 2)[CARD // 4]
    pixel = np.repeat(np.repeat(values, 8, 0), 10, 1)  # the slice of the voxel map (a partition)
    want = np.concatenate([colours(pixel, data["limit"]), np.full((16, 20, 1), round(255 * 0.6))], axis=2)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1  # premultiplied by alpha: within 1
    thumb = page.get_attribute("#gallery .card[title='s1.nii.gz'] img", "src")
    assert thumb.endswith("images/s1.jpg") and (out / "images" / "s1.jpg").is_file()
    assert not problems, problems


def test_no_inline_script_and_only_local_links(finished):
    out = finished[0]
    for page in ("index.html", "image.html"):
        html = (out / "report" / page).read_text()
        assert "<script>" not in html and "http" not in html.replace("http-equiv", "")
    assert not os.path.exists(out / "report" / "previews") or not list((out / "report" / "previews").iterdir())


@pytest.mark.timeout(300)
def test_a_csv_may_name_dicom_series_folders(tmp_path, model3d):
    pytest.importorskip("pydicom")
    from test_medical import write_series

    (tmp_path / "data").mkdir()
    write_series(tmp_path / "data" / "series1")
    (tmp_path / "data" / "list.csv").write_text("path,label\nseries1,1\n")
    code, _, err = cli(["run", tmp_path / "data" / "list.csv", "--out", tmp_path / "out", "--model", model3d,
                        "--patch", "5,3,7", "--intensity", "ct-soft-tissue", "-q"])  # fmt: skip
    assert code == 0, err
    result = OcclusionResult.load(tmp_path / "out" / "images" / "series1")
    assert result.pixel_map.shape == (5, 6, 7) and result.label == 1
    scan = occlens.read_volume(tmp_path / "data" / "series1", intensity="ct-soft-tissue")
    written = occlens.read_volume(tmp_path / "out" / "images" / "series1.nii.gz")  # the map, on the series' grid
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-5)
    np.testing.assert_allclose(written.array[0].numpy(), result.pixel_map, atol=1e-6)
