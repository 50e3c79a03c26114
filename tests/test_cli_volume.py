"""`occlens explain scan.nii.gz --model M --patch 8,16,16`: the files written, and every refusal one line, exit 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from occlens import OcclusionResult
from occlens.cli import main

nib = pytest.importorskip("nibabel")

AFFINE = np.array([[-0.8, 0, 0, 4], [0, 0.8, 0, -2], [0, 0, 2.0, 1], [0, 0, 0, 1]])


@pytest.fixture
def model3d(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(2), nn.Flatten(),
                      nn.Linear(32, 3)).eval()  # fmt: skip
    path = tmp_path / "model3d.pt"
    torch.jit.script(m).save(str(path))
    return path


@pytest.fixture
def scan(tmp_path):
    data = np.random.default_rng(0).integers(-300, 400, size=(24, 24, 16)).astype(np.int16)  # i, j, k
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("occlens: error: ") and "Traceback" not in err
    return lines[0]


def test_explain_a_nifti_scan(tmp_path, model3d, capsys):
    data = np.random.default_rng(1).random((24, 24, 16)).astype(np.float32)  # already in [0, 1]
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "unit.nii.gz")
    out = tmp_path / "out"
    code, printed, err = run(["explain", tmp_path / "unit.nii.gz", "--model", model3d, "--patch", "8,12,12",
                              "--stride", "4,12,12", "--out", out, "-q"], capsys)  # fmt: skip
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"unit.json", "unit.npz", "unit.png", "unit.nii.gz"}
    d = json.loads((out / "unit.json").read_text())
    assert d["grid"]["depth"] == 16 and d["grid"]["patch"] == [8, 12, 12] and d["settings"]["patch"] == [8, 12, 12]
    assert np.array(d["delta"]).shape == (3, 2, 2) and d["meta"]["input"]["affine"][2][0] == 2.0
    result = OcclusionResult.load(out / "unit")
    assert result.pixel_map.shape == (16, 24, 24)
    written = nib.load(out / "unit.nii.gz")
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_allclose(np.asarray(written.dataobj), result.pixel_map.transpose(2, 1, 0), rtol=1e-6)
    assert "unit" in printed


def test_a_scan_in_hounsfield_units_without_an_intensity_window_is_one_line(tmp_path, model3d, scan, capsys):
    code, _, err = run(["explain", scan, "--model", model3d, "--patch", "8", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "declare an intensity window" in one_line_error(err)
    assert not list((tmp_path / "o").glob("scan*"))


def test_a_ct_with_an_intensity_window(tmp_path, model3d, scan, capsys):
    code, _, err = run(["explain", scan, "--model", model3d, "--patch", "8", "--intensity", "ct-soft-tissue", "--out",
                        tmp_path / "o"], capsys)  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "scan.json").read_text())
    assert d["meta"]["input"]["intensity"]["name"] == "ct-soft-tissue" and d["grid"]["patch"] == [8, 8, 8]
    code, _, err = run(["explain", scan, "--model", model3d, "--patch", "8", "--intensity=-100,300", "--out",
                        tmp_path / "p"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "scan.json").read_text())["meta"]["input"]["intensity"]["low"] == -100
    code, _, err = run(["explain", scan, "--model", model3d, "--intensity", "ct-liver", "--out", tmp_path / "q"],
                       capsys)  # fmt: skip
    assert code == 2 and "ct-liver" in one_line_error(err)


def test_three_values_on_a_2d_image_is_one_line(tmp_path, capsys):
    m = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.jit.script(m).save(str(tmp_path / "m2d.pt"))
    (tmp_path / "m2d.json").write_text(json.dumps({"input_size": 32, "resize": None}))
    Image.new("RGB", (40, 40), (120, 30, 200)).save(tmp_path / "photo.png")
    code, _, err = run(["explain", tmp_path / "photo.png", "--model", tmp_path / "m2d.pt", "--patch", "8,16,16",
                        "--out", tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and "three values, a volume's window" in one_line_error(err)


def test_a_volume_too_large_for_memory_is_one_line(tmp_path, model3d, capsys, monkeypatch):
    import occlens.engines.volume as engine

    data = np.random.default_rng(1).random((24, 24, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "big.nii.gz")
    monkeypatch.setattr(engine, "available_memory", lambda device: 64 << 10)  # 64 KB free
    code, _, err = run(["explain", tmp_path / "big.nii.gz", "--model", model3d, "--patch", "8", "--out",
                        tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and "one occluded copy of the input needs about" in one_line_error(err)
    assert not list((tmp_path / "o").glob("big*"))


def test_a_file_that_is_no_volume_is_one_line(tmp_path, model3d, capsys):
    (tmp_path / "fake.nii.gz").write_bytes(b"this is not a NIfTI file")
    code, _, err = run(["explain", tmp_path / "fake.nii.gz", "--model", model3d, "--patch", "8", "--out",
                        tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and "is not a NIfTI file" in one_line_error(err)


def test_without_the_medical_extra_is_one_line(tmp_path, model3d, scan, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    code, _, err = run(["explain", scan, "--model", model3d, "--patch", "8", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "pip install 'occlens[medical]'" in one_line_error(err)


def test_patch_parses_three_values_and_bands():
    from occlens.core.checks import int_pair

    assert int_pair("8,16,16") == (8, 16, 16) and int_pair("8x16x16") == (8, 16, 16)
    assert int_pair("8") == (8, 8) and int_pair("bands") == "bands"
    with pytest.raises(ValueError, match="a volume takes D,H,W"):
        int_pair("8,16,16,16")


def test_explain_a_dicom_folder(tmp_path, model3d, capsys):
    pytest.importorskip("pydicom")
    from test_medical import write_series

    write_series(tmp_path / "series", depth=8, rows=12, cols=10)
    code, _, err = run(["explain", tmp_path / "series", "--model", model3d, "--patch", "4,6,5", "--intensity",
                        "ct-bone", "--out", tmp_path / "o"], capsys)  # fmt: skip
    assert code == 0, err
    d = json.loads((tmp_path / "o" / "series.json").read_text())
    assert np.array(d["delta"]).shape == (2, 2, 2) and d["meta"]["input"]["source"] == "series"
    written = nib.load(tmp_path / "o" / "series.nii.gz")
    assert written.shape == (10, 12, 8)  # i, j, k = w, h, d
    assert np.allclose(written.affine[:3, :3] @ [0, 0, 1], np.array(d["meta"]["input"]["affine"])[:3, 0])
