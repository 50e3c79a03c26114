"""End-to-end tests of the occlens command on the bundled photos and on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occlens.cli import main
from occlens.core.image import read_image
from occlens.core.samples import samples

FAST = ["--patch", "56"]  # 4 x 4 windows on the 224 x 224 crop: real model, quick test
RESULT_KEYS = {
    "predicted": int,
    "correct": (bool, type(None)),
    "target": int,
    "probability": float,
    "loss": float,
    "delta": list,
    "occluded_loss": list,
    "grid": dict,
    "settings": dict,
    "meta": dict,
    "sign": str,
    "top_k": list,
}


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def outputs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("occlens: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_demo_writes_figure_json_and_npz_per_sample(tmp_path, capsys):
    code, out, err = run(["demo", "--out", tmp_path, *FAST], capsys)
    assert code == 0, err
    for s in samples():
        stem = tmp_path / s.path.stem
        with Image.open(stem.with_suffix(".png")) as png:
            png.load()
            assert png.format == "PNG" and png.width > 600 and png.height > 300
        data = json.loads(stem.with_suffix(".json").read_text())
        for key, kind in RESULT_KEYS.items():
            assert isinstance(data[key], kind), key
        assert data["label"] == s.label
        assert data["correct"] == (data["predicted"] == s.label)
        assert data["meta"]["model"] == "efficientnet-lite0"
        assert data["grid"]["rows"] == data["grid"]["cols"] == 4
        assert np.array(data["delta"]).shape == (4, 4)
        with np.load(stem.with_suffix(".npz")) as z:
            assert z["pixel_map"].shape == (224, 224)
            assert np.allclose(z["delta"], data["delta"])
        assert s.path.stem in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_demo_has_a_real_mistake_and_draws_both_maps(tmp_path, capsys):
    code, _, _ = run(["demo", "--out", tmp_path, *FAST], capsys)
    assert code == 0
    wrong = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    wrong = [d for d in wrong if d["correct"] is False]
    assert wrong, "the bundled photos must include a real mistake of the default model"
    for d in wrong:
        assert d["label_map"]["class"] == d["label"]
        with Image.open(tmp_path / (Path(d["meta"]["image"]).stem + ".png")) as png:
            single = png.size
        assert single[1] > 600  # two rows of panels


def test_explain_accepts_label_names_and_target(tmp_path, capsys):
    cat = next(s for s in samples() if s.label == 281)
    code, out, err = run(
        ["explain", cat.path, "--label", "TABBY", "--target", "tiger cat", "--out", tmp_path, *FAST], capsys
    )
    assert code == 0, err
    data = json.loads((tmp_path / f"{cat.path.stem}.json").read_text())
    assert data["label"] == 281 and data["target"] == 282
    assert data["meta"]["target_name"] == "tiger cat"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--label", "tabbby"], "did you mean 'tabby'"),
        (["--label", "1000"], "out of range"),
        (["--target", "-1"], "out of range"),
        (["--fill", "purple"], "unknown fill"),
        (["--stride", "60"], "stride 60x60 is larger than patch"),
        (["--patch", "300"], "larger than the 224x224 image"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--model", "nosuchmodel"], "unknown model"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    image = samples()[0].path
    code, _, err = run(["explain", image, "--out", tmp_path / "o", *FAST, *argv], capsys)
    assert code == 2
    assert expected in one_line_error(err)
    assert not outputs(tmp_path / "o") - set()  # nothing written


def write_bad(kind: str, folder: Path) -> Path:
    good = folder / "good.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    path = folder / f"bad-{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:60])
    elif kind == "corrupt":
        data = bytearray(good.read_bytes())
        data[40:80] = b"\x00" * 40
        path.write_bytes(bytes(data))
    elif kind == "missing":
        pass
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "corrupt", "missing", "folder"])
def test_bad_files_exit_2_and_leave_nothing(tmp_path, capsys, kind):
    path = write_bad(kind, tmp_path)
    out = tmp_path / "out"
    code, _, err = run(["explain", path, "--out", out, *FAST], capsys)
    assert code == 2
    assert str(path) in one_line_error(err)
    assert outputs(out) == set()


def test_a_bad_file_does_not_stop_the_others(tmp_path, capsys):
    bad = write_bad("text", tmp_path)
    out = tmp_path / "out"
    code, _, err = run(["explain", bad, tmp_path / "good.png", "--out", out, *FAST], capsys)
    assert code == 2
    assert str(bad) in one_line_error(err)
    assert outputs(out) == {"good.png", "good.json", "good.npz"}


def test_decompression_bomb_guard_and_its_override(tmp_path, capsys):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    code, _, err = run(["explain", path, "--out", tmp_path / "o", "--max-pixels", "500", *FAST], capsys)
    assert code == 2 and "--max-pixels" in one_line_error(err)
    code, _, err = run(["explain", path, "--out", tmp_path / "o", "--max-pixels", "0", *FAST], capsys)
    assert code == 0, err


def odd_image(kind: str, path: Path) -> Path:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    if kind == "gray":
        Image.fromarray(rgb[:, :, 0], "L").save(path.with_suffix(".png"))
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(path.with_suffix(".png"))
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path.with_suffix(".png"))
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
        return path.with_suffix(".jpg")
    elif kind == "16bit":
        Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(path.with_suffix(".png"))
    elif kind == "exif":
        img = Image.fromarray(rgb)
        exif = img.getexif()
        exif[0x0112] = 6  # rotate 90
        img.save(path.with_suffix(".jpg"), exif=exif)
        return path.with_suffix(".jpg")
    elif kind == "tiny":
        Image.fromarray(rgb[:3, :2]).save(path.with_suffix(".png"))
    elif kind == "wide":
        Image.fromarray(np.tile(rgb, (1, 20, 1))[:20]).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "cmyk", "16bit", "exif", "tiny", "wide"])
def test_odd_but_valid_images_work(tmp_path, capsys, kind):
    path = odd_image(kind, tmp_path / kind)
    code, _, err = run(["explain", path, "--out", tmp_path / "o", *FAST], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o" / f"{kind}.json").read_text())
    assert data["grid"]["height"] == data["grid"]["width"] == 224
    if kind == "exif":  # stored 70 wide x 90 high, EXIF orientation 6 turns it to 90 x 70
        assert read_image(path).size == (90, 70)


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(["explain", samples()[0].path, "--out", blocker / "sub", *FAST], capsys)
    assert code == 2
    assert "cannot write to output folder" in one_line_error(err)


def test_same_stem_twice_gets_two_sets_of_outputs(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / folder / "x.png")
    code, _, _ = run(["explain", tmp_path / "a/x.png", tmp_path / "b/x.png", "--out", tmp_path / "o", *FAST], capsys)
    assert code == 0
    assert {"x.json", "x-2.json"} <= outputs(tmp_path / "o")


def test_labels_grep_version_and_help(capsys):
    assert run(["labels", "--grep", "TABBY"], capsys)[:2] == (0, "281\ttabby\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("occlens ")
    for argv, shown in [
        (["--help"], "explain"),
        (["explain", "--help"], "(default: gray)"),
        (["demo", "--help"], "(default: occlens-out)"),
        (["labels", "--help"], "--grep"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert shown in out and "(default: None)" not in out and "(default: False)" not in out  # no default: no word


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["explain", "x.png", "--engine", "turbo"], "invalid choice: 'turbo'"),
        (["explain", "x.png", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["explain", "x.png", "--patch", "big"], "expected N or H,W (integers), got 'big'"),
        (["explain"], "the following arguments are required: IMAGE"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line_and_where_to_look(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "explain" and len(argv) > 1 else argv)
    assert exit_info.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert expected in line and line.endswith("--help")
    assert not (tmp_path / "o").exists()


def test_a_run_that_writes_nothing_leaves_no_folder_behind(tmp_path, capsys):
    bad = write_bad("text", tmp_path)
    out = tmp_path / "new" / "out"
    code, _, err = run(["explain", bad, "--out", out, *FAST], capsys)
    assert code == 2 and "not an image" in one_line_error(err)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert run(["explain", bad, "--out", kept, *FAST], capsys)[0] == 2
    assert kept.is_dir()  # the user's own folder stays


@pytest.mark.slow
def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "occlens", "explain", tmp_path / "nope.png", "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"occlens: error: {tmp_path / 'nope.png'}: no such file; check the path"
    ]


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.slow
def test_output_read_by_a_program_that_stops_early_ends_quietly(tmp_path, unbuffered):
    """``occlens labels | head -2``: the reader goes away, so the command stops, without an error message,
    whether Python's output is buffered (a pipe) or not (PYTHONUNBUFFERED)."""
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(200_000)))  # far more than a pipe holds
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | (
        {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    )
    command = [sys.executable, "-m", "occlens", "labels", "--labels", str(names)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(64)  # some of the lines, then the reader is gone
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert first.startswith(b"0\tclass 0\n") and proc.returncode == 141 and err == b"", err


def test_a_target_is_named_in_the_table_and_in_the_words_under_it(tmp_path, capsys):
    from test_all_classes import half_red_half_green
    from test_runs import make_model

    image, model = half_red_half_green(tmp_path / "a.png"), make_model(tmp_path / "m")
    base = ["explain", image, "--model", model, "--patch", "8", "--out", tmp_path / "o"]
    code, out, _ = run(base, capsys)
    assert code == 0 and "explained" not in out.splitlines()[0]
    assert out.rstrip().endswith("(δL < 0: the window supported the prediction)")
    code, out, _ = run([*base, "--target", "blue"], capsys)
    header, _, row = out.splitlines()[:3]
    assert code == 0 and "explained" in header and row.split()[1:4] == ["red", "(0.53)", "-"]
    assert row.split()[4] == "blue"  # the class explained, in its column
    assert "supported the prediction" not in out
    assert out.rstrip().endswith("(δL < 0: the window supported the explained class 2 blue)")
    data = tmp_path / "d" / "red"
    data.mkdir(parents=True)
    half_red_half_green(data / "a.png")
    code, out, _ = run(["run", tmp_path / "d", "--model", model, "--patch", "8", "--workers", "0", "--target", "1",
                        "--out", tmp_path / "r"], capsys)  # fmt: skip
    assert code == 0 and "(δL < 0: the window supported the explained class 1 green)" in out
    assert "supported the prediction" not in out
