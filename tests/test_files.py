"""Atomic files under failure: a write that fails or is killed half-way leaves the old file or none,
never a partial one, and a run removes what a killed run left half-written."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from test_runs import make_imagefolder, make_model

from occlens.cli import main
from occlens.core.files import atomic_write


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def half(f):
        f.write(b"new but not all of it")
        raise OSError("disk full (simulated by the writer)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_write_killed_half_way_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "big.npz"
    target.write_bytes(b"old")
    code = textwrap.dedent(f"""
        import os, signal, sys
        from occlens.core.files import atomic_write
        def write(f):
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the write
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"  # the rename never happened
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "big.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.npz.") and leftovers[0].endswith(".part")


def test_a_run_removes_what_a_killed_run_left_half_written(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    make_imagefolder(tmp_path / "data", 3, broken=False)
    argv = ["run", str(tmp_path / "data"), "--model", str(model), "--out", str(tmp_path / "out"), "--patch", "8",
            "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    planted = [tmp_path / "out" / "images" / "red" / ".img000.png.a1b2c3d4.part",
               tmp_path / "out" / "report" / ".index.html.zz.part"]  # fmt: skip
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (tmp_path / "out" / "images" / "keep.part").write_bytes(b"a user's file, not one of ours")
    assert main(argv) == 0
    assert not any(p.exists() for p in planted) and (tmp_path / "out" / "images" / "keep.part").exists()
    assert "3 done before" in capsys.readouterr().err


def test_pickles_are_refused_on_the_command_line_too(tmp_path, capsys):
    import torch

    full = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(2, 2), full)  # a whole pickled module: unpickling it could run code
    image = tmp_path / "a.png"
    from test_runs import colour_image

    colour_image(0, 1).save(image)
    for argv in (["--model", str(full)], ["--model", "torchvision:resnet18", "--weights", str(full)]):
        assert main(["explain", str(image), *argv, "--out", str(tmp_path / "o")]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "needs full unpickling" in line and "--trust-pickle" in line
    assert not (tmp_path / "o").exists()
