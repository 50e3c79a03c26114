"""A corpus of bad and edge-case inputs, run through the real ``occlens`` command.

One table: the case builds its files in a fresh folder and returns the command line; the command must
end with the exit code given, print the message fragment (on one line of stderr when it is an error),
leave no traceback and, when it refuses, leave nothing on disk. Then hypothesis fuzzes the option
parsers and the image decoder, and a run with hostile file names resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_runs import NAMES, colour_image, make_model

import occlens
from occlens.cli import main
from occlens.cli.parser import floats, size_pair
from occlens.core.image import read_image
from occlens.core.scoring import check_class

SMALL = ["--patch", "8", "--workers", "0"]


def image_at(path: Path, colour: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour_image(colour, 1).save(path, format="PNG")
    return path


def dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        image_at(root / NAMES[i % 3] / f"img{i}.png", i % 3)
    return root


class Case:
    """``build(tmp) -> argv``; the expected exit code and stderr fragment; whether files may be left."""

    def __init__(self, build, code: int, fragment: str, leaves: bool = False):
        self.build, self.code, self.fragment, self.leaves = build, code, fragment, leaves


def model(tmp: Path, names=NAMES) -> Path:
    return make_model(tmp / "model", names=names)


def labels_file(tmp: Path, text: str | bytes, name: str = "names.txt") -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def config(tmp: Path, data) -> Path:
    path = tmp / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def explain(tmp: Path, *extra, image: Path | None = None, using: Path | None = None, out: str | None = None) -> list:
    image = image or image_at(tmp / "in" / "a.png")
    out = tmp / "out" if out is None else out
    return ["explain", image, "--model", using or model(tmp), "--out", out, *SMALL[:2], *extra]


def run_of(tmp: Path, data: Path, *extra) -> list:
    return ["run", data, "--model", model(tmp), "--out", tmp / "out", *SMALL, *extra]


CASES = {
    # 2. pickle advice only for real pickles
    "random-bytes-as-model": Case(
        lambda t: explain(t, using=labels_file(t, os.urandom(4000), "m.pt")),
        2,
        "not a PyTorch file",
    ),
    "random-bytes-trusted": Case(
        lambda t: explain(t, "--trust-pickle", using=labels_file(t, os.urandom(4000), "m.pt")),
        2,
        "not a PyTorch file",
    ),
    # 4. labels files that do not fit the model
    "fewer-labels": Case(
        lambda t: explain(t, "--labels", labels_file(t, "a\nb\n")),
        2,
        "the labels name 2 classes but the model returns 3 scores",
    ),
    "more-labels": Case(
        lambda t: explain(t, "--labels", labels_file(t, "a\nb\nc\nd\n")),
        2,
        "the labels name 4 classes but the model returns 3 scores",
    ),
    # 5. class names are literal text in the figure
    "mathtext-name": Case(lambda t: explain(t, "--labels", labels_file(t, "$\\bogus$\nb\nc\n")), 0, "", True),
    # 8. options checked before any image
    "run-patch-0": Case(lambda t: run_of(t, dataset(t / "d"), "--patch", "0"), 2, "patch must be at least 1 pixel"),
    "run-fill-bogus": Case(lambda t: run_of(t, dataset(t / "d"), "--fill", "bogus"), 2, "fill"),
    "run-patch-too-big": Case(
        lambda t: run_of(t, dataset(t / "d"), "--patch", "33"), 2, "patch 33x33 is larger than the 32x32 image"
    ),
    # 9. bad input is exit 2 and one line, never an internal error
    "label-superscript": Case(lambda t: explain(t, "--label", "²"), 2, "'²' is not a class name"),
    "label-double-minus": Case(lambda t: explain(t, "--label=--3"), 2, "'--3' is not a class name"),
    "target-superscript": Case(lambda t: explain(t, "--target", "²"), 2, "'²' is not a class name"),
    "csv-label-superscript": Case(
        lambda t: run_of(t, labels_file(t, f"path,label\n{image_at(t / 'a.png')},²\n", "d.csv")),
        2,
        "'²' is not a class name",
    ),
    "class-folder-superscript": Case(
        lambda t: run_of(t, image_at(t / "d" / "²" / "a.png").parent.parent), 2, "'²' is not a class name"
    ),
    "csv-extra-fields": Case(
        lambda t: run_of(t, labels_file(t, f"path,label\n{image_at(t / 'a.png')},red,extra\n", "d.csv")),
        2,
        "more fields than the header has",
    ),
    "labels-not-utf8": Case(lambda t: explain(t, "--labels", labels_file(t, b"\xff\xfe\x00a\n")), 2, "is not UTF-8"),
    "config-not-utf8": Case(
        lambda t: explain(t, "--model-config", labels_file(t, b'{"a": "\xff"}', "c.json")), 2, "is not UTF-8"
    ),
    "config-size-float": Case(
        lambda t: explain(t, "--model-config", config(t, {"input_size": 32.5})),
        2,
        "input_size must be N or [height, width]",
    ),
    "config-size-null": Case(
        lambda t: explain(t, "--model-config", config(t, {"input_size": None})),
        2,
        "input_size must be N or [height, width]",
    ),
    "config-labels-number": Case(
        lambda t: explain(t, "--model-config", config(t, {"labels": 5})),
        2,
        "labels must be a labels file or a list of class names",
    ),
    "config-deeply-nested": Case(
        lambda t: explain(t, "--model-config", config(t, "[" * 100000 + "]" * 100000)), 2, "nested too deeply"
    ),
    "seed-too-big": Case(
        lambda t: explain(t, "--fill", "noise", "--seed", str(2**64)), 2, "seed must be an int from 0 to 2**63 - 1"
    ),
    "num-classes-huge": Case(
        lambda t: [
            "explain",
            image_at(t / "a.png"),
            "--model",
            "timm:resnet18",
            "--num-classes",
            str(10**9),
            "--out",
            t / "out",
        ],
        2,
        "num_classes must be an int from 2 to 1,000,000",
    ),
    "images-is-a-file": Case(
        lambda t: (
            labels_file(t, "x", "out"),
            (t / "out").rename(t / "x"),
            (t / "out").mkdir(),
            (t / "x").rename(t / "out" / "images"),
            run_of(t, dataset(t / "d")),
        )[-1],
        2,
        "is a file, where the run keeps its images",
        True,
    ),
    "out-name-too-long": Case(lambda t: explain(t, out=t / ("x" * 300)), 2, "cannot write to output folder"),
    # 10. no silent wrong results
    "num-classes-on-a-file": Case(
        lambda t: explain(t, "--num-classes", "10"), 2, "num_classes applies to torchvision:NAME and timm:NAME"
    ),
    "out-empty": Case(lambda t: explain(t, out=""), 2, "expected a folder, got an empty string"),
    # 11. messages that say what is wrong
    "newline-in-name": Case(
        lambda t: explain(t, image=labels_file(t, "not an image", "bad\nname.png")),
        2,
        "bad\\nname.png: not an image Pillow can read",
    ),
    "link-loop": Case(
        lambda t: (os.symlink(t / "loop.png", t / "loop.png"), explain(t, image=t / "loop.png"))[-1],
        2,
        "Too many levels of symbolic links",
    ),
    "fifo": Case(lambda t: (os.mkfifo(t / "f.png"), explain(t, image=t / "f.png"))[-1], 2, "not a regular file"),
    "proc-file": Case(lambda t: explain(t, image=Path("/proc/self/status")), 2, "not an image Pillow can read"),
    "dev-urandom": Case(lambda t: explain(t, image=Path("/dev/urandom")), 2, "not a regular file"),
    # 12. what a newcomer types: no internal error, no one else's warning, nothing left behind
    "image-the-root-folder": Case(lambda t: explain(t, image=Path("/")), 2, "/: is a folder, not an image file"),
    "image-an-empty-string": Case(
        lambda t: ["explain", "", "--model", model(t), "--out", t / "out", *SMALL[:2]], 2, "got an empty string"
    ),
    "pickle-protocol-4-untrusted": Case(
        lambda t: explain(t, using=whole_module(t, protocol=4)), 2, "needs full unpickling"
    ),  # fmt: skip
    "run-outputs-would-collide": Case(
        lambda t: run_of(
            t,
            (
                image_at(t / "d" / "red" / "x.png"),
                image_at(t / "d" / "red" / "x.jpg"),
                image_at(t / "d" / "red" / "x_png.png"),
            )[0].parent.parent,
        ),
        2,
        "would both write outputs named red/x_png",
    ),  # fmt: skip
}


def whole_module(tmp: Path, protocol: int) -> Path:
    """A whole pickled module (not a state dict): loading it needs full unpickling."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.save(net, tmp / "whole.pt", pickle_protocol=protocol)
    return tmp / "whole.pt"


@pytest.mark.parametrize("name", CASES)
def test_corpus(name, tmp_path, capsys):
    case = CASES[name]
    argv = [str(a) for a in case.build(tmp_path)]
    before = {p for p in tmp_path.rglob("*")}
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in err and "internal error" not in err
    if case.code == 2:
        errors = [line for line in err.splitlines() if line.startswith("occlens: error:")]
        assert len(errors) == 1 and case.fragment in errors[0], err
        assert err.strip().splitlines() == errors, err  # the one line alone: no warning of someone else's before it
    if not case.leaves:
        assert {p for p in tmp_path.rglob("*")} == before  # nothing written, nothing half-written


def test_one_error_for_bad_options_however_many_images(tmp_path, capsys):
    images = [image_at(tmp_path / f"{c}.png") for c in "abc"]
    code = main(["explain", *map(str, images), "--model", str(model(tmp_path)), "--out", str(tmp_path / "o"),
                 "--patch", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("occlens: error:") == 1 and not (tmp_path / "o").exists()


def test_every_image_gets_its_own_outputs(tmp_path, capsys):
    images = [image_at(tmp_path / name) for name in ("a.png", "a.jpg", "a-2.png")] + [
        image_at(tmp_path / "s" / "a.png")
    ]
    assert main(["explain", *map(str, images), "--model", str(model(tmp_path)), "--out", str(tmp_path / "o"),
                 "--patch", "8"]) == 0  # fmt: skip
    assert len(list((tmp_path / "o").glob("*.json"))) == 4


def test_a_dataset_with_a_link_loop_and_the_run_inside_it(tmp_path, capsys):
    data = dataset(tmp_path / "d", 2)
    os.symlink("..", data / "red" / "loop")
    os.symlink("../green", data / "red" / "green-again")
    argv = ["run", str(data), "--model", str(model(tmp_path)), "--out", str(data / "out"), *SMALL]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "occlens: warning: skipped 2 linked folder(s) listed already" in err and "2 images" in err
    assert main(argv) == 0  # the run's folder inside the dataset is not listed as a class
    assert "2 done before, 0 to do" in capsys.readouterr().err


def test_a_refused_run_leaves_no_manifest(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["run", str(dataset(tmp_path / "d")), "--model", str(model(tmp_path)), "--out", str(tmp_path / "out"),
            "--ray", "--address", "127.0.0.1:1", *SMALL[:2]]  # fmt: skip
    assert main(argv) == 2 and "nothing answers there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_onnx_models_refuse_reduced_precision_and_compile(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}})  # fmt: skip
    image = image_at(tmp_path / "a.png")
    for flag in (["--precision", "bf16"], ["--compile"]):
        assert main(["explain", str(image), "--model", str(path), "--out", str(tmp_path / "o"), *flag]) == 2
        assert "runs outside torch" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_torchscript_errors_show_the_models_own_message(tmp_path, capsys):
    class Picky(torch.nn.Module):
        def forward(self, x):
            if x.shape[2] != 32:
                raise RuntimeError("this model takes 32x32 images only")
            return x.mean((2, 3))

    torch.jit.script(Picky()).save(str(tmp_path / "picky.pt"))
    assert main(["explain", str(image_at(tmp_path / "a.png")), "--model", str(tmp_path / "picky.pt"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "this model takes 32x32 images only" in line


class Forever(torch.nn.Module):
    """A model whose forward pass never returns: a loop inside the TorchScript interpreter."""

    def forward(self, x):
        i = 0
        while i >= 0:
            i = (i + 1) % 1000
        return x.mean((2, 3))


def wait_until_spinning(proc: subprocess.Popen, quiet_s: float = 2.0, limit_s: float = 120.0) -> None:
    """Wait until ``proc`` has read nothing for ``quiet_s`` while it kept running: start-up reads files (Python's
    modules, torch's libraries, the model), a forward pass that never returns reads none."""
    io = Path(f"/proc/{proc.pid}/io")
    if not io.exists():  # not Linux: the fixed wait of old
        time.sleep(8)
        return
    last, since, deadline = None, time.monotonic(), time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        read = next(line for line in io.read_text().splitlines() if line.startswith("rchar"))
        if read != last:
            last, since = read, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_a_model_that_never_returns(tmp_path):
    torch.jit.script(Forever()).save(str(tmp_path / "forever.pt"))
    (tmp_path / "forever.json").write_text(json.dumps({"input_size": 32, "resize": None, "labels": NAMES}))
    command = [sys.executable, "-m", "occlens", "explain", str(image_at(tmp_path / "a.png")), "--model",
               str(tmp_path / "forever.pt"), "--out", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_spinning(proc)  # start-up (slow on a busy machine) done: inside a forward pass that never returns
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        time.sleep(1)
        assert proc.poll() is None  # the first Ctrl-C cannot interrupt the interpreter loop...
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)  # ...the second ends the process at once
    finally:
        proc.kill()
    assert proc.returncode == 130 and "stopped at once (second Ctrl-C)" in err and "Traceback" not in err


def test_a_run_with_hostile_file_names_resumes(tmp_path, capsys):
    data = tmp_path / "d"
    hostile = ["new\nline.png", "quote\"'<b>.png", "$\\bogus$.png", "é" * 120 + ".png", "x" * 236 + ".png"]
    for i, name in enumerate(hostile):
        image_at(data / NAMES[i % 3] / name, i % 3)
    raw = os.fsencode(data / "red") + b"/caf\xe9.png"  # not UTF-8
    colour_image(0, 2).save(raw.decode("utf-8", "surrogateescape"), format="PNG")
    argv = ["run", str(data), "--model", str(model(tmp_path)), "--out", str(tmp_path / "out"), *SMALL]
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr()
    assert "explained 6 of 6 images" in first.out and "0 failed" in first.out
    assert main(argv) == 0
    assert "6 done before, 0 to do" in capsys.readouterr().err
    written = list((tmp_path / "out" / "images").rglob("*.json"))
    assert len(written) == 6 and all(len(os.fsencode(p.name)) <= 255 for p in written)
    assert not list((tmp_path / "out").rglob(".*.part"))


# -- fuzzing -----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_option_parsers_refuse_cleanly(text):
    import argparse

    for parse in (size_pair, floats):
        try:
            parse(text)
        except argparse.ArgumentTypeError as err:
            assert "\n" not in str(err)
    try:
        check_class(text, None, "--label", NAMES)
    except occlens.ConfigError as err:
        assert text.strip() == "" or repr(text.strip())[1:-1][:4] in str(err) or "out of range" in str(err)


@settings(max_examples=200, deadline=None)
@given(
    patch=st.one_of(st.integers(-3, 40), st.tuples(st.integers(-3, 40), st.integers(-3, 40)), st.text(max_size=3)),
    stride=st.one_of(st.none(), st.integers(-3, 40), st.floats(allow_nan=True)),
    fill=st.one_of(st.sampled_from(["gray", "mean", "blur", "noise", "bogus", ""]), st.floats(), st.integers()),
    seed=st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=2)),
)
def test_settings_are_built_or_refused_with_a_config_error(patch, stride, fill, seed):
    try:
        occlens.Settings(patch, stride, fill, seed=seed)
    except occlens.ConfigError as err:
        assert "\n" not in str(err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"]))
def test_the_decoder_refuses_random_bytes_with_an_image_error(tmp_path, data, magic):
    path = tmp_path / "fuzz.png"
    path.write_bytes(magic + data)
    try:
        image = read_image(path)
    except occlens.ImageError as err:
        assert "\n" not in str(err)
    else:  # rarely, random bytes are a valid tiny image
        assert image.mode == "RGB" and np.asarray(image).ndim == 3


@pytest.mark.slow
def test_workers_do_not_change_the_outputs(tmp_path, capsys):
    data = dataset(tmp_path / "d", 16)  # 8 images per worker: both workers start
    base = ["run", str(data), "--model", str(model(tmp_path)), "--patch", "8"]
    assert main([*base, "--out", str(tmp_path / "w0"), "--workers", "0"]) == 0
    assert main([*base, "--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    written = sorted((tmp_path / "w0" / "images").rglob("*.npz"))
    assert len(written) == 16
    for path in written:  # byte for byte: the same numbers, whichever process decoded the image
        assert path.read_bytes() == (tmp_path / "w2" / path.relative_to(tmp_path / "w0")).read_bytes()


def test_an_image_scores_the_same_wherever_its_memory_lies(tmp_path):
    net = torch.jit.load(str(model(tmp_path)))
    image = np.asarray(colour_image(1, 5).resize((32, 32)), dtype=np.float32) / 255
    shifted = np.empty(image.size + 1, dtype=np.float32)[1:].reshape(image.shape)  # 4 bytes off alignment
    shifted[...] = image
    assert occlens.core.image.to_tensor(shifted).data_ptr() % 64 == 0
    a, b = (occlens.explain(net, x, patch=8) for x in (image, shifted))
    assert np.array_equal(a.delta, b.delta) and a.loss == b.loss


def test_a_class_named_with_digits_is_that_class_not_an_index(tmp_path, capsys):
    names = ["2", "0", "1"]  # the class *named* "2" is index 0
    path = make_model(tmp_path / "m", names=names)
    image_at(tmp_path / "d" / "2" / "red.png", 0)  # red: the model predicts index 0, the class named "2"
    assert main(["run", str(tmp_path / "d"), "--model", str(path), "--out", str(tmp_path / "out"), *SMALL]) == 0
    assert "accuracy: 1/1 = 100.0%" in capsys.readouterr().out
    assert check_class("2", None, "label", names) == 0 and check_class(2, None, "label", names) == 2


def test_max_pixels_holds_in_run_and_evaluate_too(tmp_path, capsys):
    data = dataset(tmp_path / "d", 2)
    Image.new("RGB", (120, 100), (200, 10, 10)).save(data / "red" / "big.png")  # 12,000 pixels
    path = model(tmp_path)
    argv = ["run", str(data), "--model", str(path), "--out", str(tmp_path / "out"), *SMALL, "--max-pixels", "5000"]
    assert main(argv) == 2  # the big image failed, the others were explained
    out = capsys.readouterr().out
    assert "explained 2 of 3 images" in out and "red/big.png:" in out and "--max-pixels" in out
    evaluate = ["evaluate", str(data / "red" / "big.png"), "--model", str(path), "--patch", "8", "--steps", "4",
                "--out", str(tmp_path / "ev"), "--max-pixels", "5000"]  # fmt: skip
    assert main(evaluate) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "big.png" in line and "--max-pixels" in line and not (tmp_path / "ev").exists()
    assert main(evaluate[:-2] + ["--max-pixels", "8000"]) == 2  # 1-2x the limit: Pillow only warns; refused too
    assert "--max-pixels" in capsys.readouterr().err
    assert main(evaluate[:-2] + ["--max-pixels", "20000"]) == 0
