"""A finished run asked for again answers from its manifest: without loading its model, without torch, without
worker processes; anything that could change its outputs still takes the full way (and is refused, or redone
with --force, as before).

The model here is a whole pickled module (``--trust-pickle``) whose loading is counted: unpickling a module
calls its ``__setstate__``, once per load of the file.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runs import FAST, NAMES, SIZE, make_imagefolder, make_model, output_files, run

import occlens
from occlens.app.manifest import FILE, Manifest
from occlens.core.errors import ConfigError

LOADS: list[str] = []  # one entry per load of a Counted file (in this process)


class Counted(torch.nn.Module):
    """The colour classifier of test_runs (class c's logit: ``scale`` x the mean of channel c), counting its loads."""

    def __init__(self, scale: float = 8.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale), requires_grad=False)

    def forward(self, x):
        return self.scale * x.mean(dim=(2, 3))

    def __setstate__(self, state):
        LOADS.append("load")
        super().__setstate__(state)


def counted_model(folder: Path, scale: float = 8.0, names=NAMES) -> Path:
    """counted.pt (a whole pickled Counted) and counted.json beside it, as test_runs.make_model's."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(Counted(scale), folder / "counted.pt")
    description = {"input_size": [SIZE, SIZE], "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1],
                   "labels": list(names)}  # fmt: skip
    (folder / "counted.json").write_text(json.dumps(description))
    return folder / "counted.pt"


@pytest.fixture
def finished(tmp_path, capsys):
    """A finished run of 4 images with the counted model: (command line, out, its stdout)."""
    model = counted_model(tmp_path / "model")
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 4, broken=False)
    argv = ["run", data, "--out", out, "--model", model, "--trust-pickle", *FAST, "--workers", "0"]
    LOADS.clear()
    code, stdout, err = run(argv, capsys)
    assert code == 0 and "0 done before, 4 to do" in err and len(LOADS) == 1
    return argv, out, stdout


def files_of(out: Path) -> dict[str, int]:
    return {p: (out / "images" / p).stat().st_mtime_ns for p in output_files(out)}


def test_a_finished_run_answers_from_its_manifest_without_loading_its_model(finished, capsys):
    argv, out, first = finished
    before = files_of(out)
    (out / "report" / "index.html").unlink()  # the report is written again from the manifest
    LOADS.clear()
    code, stdout, err = run(argv, capsys)
    assert code == 0 and LOADS == []  # the model file was not loaded
    assert "4 images (imagefolder); 4 done before, 0 to do" in err and "report:" in stdout
    assert files_of(out) == before and (out / "report" / "index.html").is_file()


def test_the_summary_of_a_finished_run_is_the_one_the_run_printed(finished, capsys):
    argv, out, first = finished
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    # the first line says what this call did (4 explained now, then none); the rest is the same table
    assert first.splitlines()[0].startswith("explained 4 of 4 images (4 this run in")
    assert stdout.splitlines()[0] == "explained 4 of 4 images (0 this run in 0s); 0 failed"
    assert stdout.splitlines()[1:] == first.splitlines()[1:]


def test_a_finished_run_resumed_in_a_new_process_imports_no_torch(tmp_path, capsys):
    """The command and occlens.run, each in a process of its own: the answer comes without torch (so without the
    model and without worker processes, which need it)."""
    model = make_model(tmp_path / "model")  # TorchScript: occlens.run takes it by name
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 3, broken=False)
    assert run(["run", data, "--out", out, "--model", model, *FAST, "--workers", "0"], capsys)[0] == 0
    command = (f"import sys; from occlens.cli import main; code = main(['run', {str(data)!r}, '--out', {str(out)!r}, "
               f"'--model', {str(model)!r}, '--patch', '8', '--workers', '0']); "
               "print('torch' in sys.modules, code)")  # fmt: skip
    python = (f"import sys, occlens; r = occlens.run({str(data)!r}, {str(out)!r}, {str(model)!r}, patch=8, "
              "workers=0); print('torch' in sys.modules, r.done_now, r.summary.explained)")  # fmt: skip
    for code, expected in ((command, "False 0"), (python, "False 0 3")):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == expected
        assert "3 done before, 0 to do" in done.stderr


def test_changed_options_and_files_take_the_full_way_as_before(finished, capsys, tmp_path):
    argv, out, _ = finished
    model = Path(argv[5])
    LOADS.clear()
    code, _, err = run([*argv, "--top-k", "3"], capsys)  # an option the outputs depend on
    assert code == 2 and "options.top_k: 5 -> 3" in err and LOADS == ["load"]
    # the model file changed in place (same name, same size, other weights)
    size = model.stat().st_size
    torch.save(Counted(4.0), model)
    assert model.stat().st_size == size
    LOADS.clear()
    code, _, err = run(argv, capsys)
    assert code == 2 and "model.file" in err and LOADS == ["load"]
    torch.save(Counted(8.0), model)  # back as it was (the same bytes: the run answers again without loading it)
    LOADS.clear()
    assert run(argv, capsys)[0] == 0 and LOADS == []
    # the description beside the model file says another mean
    description = model.with_suffix(".json")
    text = description.read_text()
    description.write_text(text.replace('"mean": [0, 0, 0]', '"mean": [0.5, 0.5, 0.5]'))
    code, _, err = run(argv, capsys)
    assert code == 2 and "model.preprocess.mean" in err and LOADS == ["load"]
    description.write_text(text)
    # --force always takes the full way: the model is loaded and the whole fingerprint checked (here the same:
    # nothing to redo)
    LOADS.clear()
    code, _, err = run([*argv, "--force"], capsys)
    assert code == 0 and "4 done before, 0 to do" in err and LOADS == ["load"]


def test_settings_that_change_nothing_take_the_full_way_once_then_answer_fast(finished, capsys):
    argv, out, _ = finished
    LOADS.clear()
    # the batch size, the device and the workers are no part of the outputs, nor of the request: answered at once
    code, _, err = run([*argv, "--batch-size", "3", "--device", "cpu"], capsys)
    assert code == 0 and "4 done before, 0 to do" in err and LOADS == []
    # the stride spelt out as its default (the patch): a request of its own, the same fingerprint; the full way
    # once (nothing to redo), then recorded as asked
    code, _, err = run([*argv, "--stride", "8"], capsys)
    assert code == 0 and "4 done before, 0 to do" in err and LOADS == ["load"]
    assert run([*argv, "--stride", "8"], capsys)[0] == 0 and LOADS == ["load"]


def test_an_image_missing_or_added_takes_the_full_way(finished, capsys):
    argv, out, _ = finished
    data = Path(str(argv[1]))
    (out / "images" / "red" / "img003.npz").unlink()
    LOADS.clear()
    code, _, err = run(argv, capsys)
    assert code == 0 and "3 done before, 1 to do" in err and LOADS == ["load"]
    (data / "blue" / "new.png").write_bytes((data / "blue" / "img002.png").read_bytes())
    code, _, err = run(argv, capsys)
    assert code == 0 and "4 done before, 1 to do" in err and LOADS == ["load", "load"]
    assert run(argv, capsys)[0] == 0 and LOADS == ["load", "load"]


def test_a_run_made_before_requests_were_recorded_takes_the_full_way_once(finished, capsys):
    argv, out, _ = finished
    db = sqlite3.connect(out / FILE)
    db.execute("DELETE FROM run WHERE name = 'resume'")  # as an earlier occlens left it
    db.commit()
    db.close()
    LOADS.clear()
    assert run(argv, capsys)[0] == 0 and LOADS == ["load"]
    assert run(argv, capsys)[0] == 0 and LOADS == ["load"]


def test_the_manifest_keeps_the_request_only_with_the_settings_it_was_stored_with(tmp_path):
    with Manifest(tmp_path) as m:
        assert m.resume() is None
        m.start({"patch": 8}, resume={"request": {"a": 1}})
        assert m.resume() == {"request": {"a": 1}}
        m.start({"patch": 8})  # the same settings, no new request: the stored one stays
        assert m.resume() == {"request": {"a": 1}}
        with pytest.raises(ConfigError, match="other settings"):
            m.start({"patch": 16}, resume={"request": {"a": 2}})
        assert m.resume() == {"request": {"a": 1}}
        m.start({"patch": 16}, force=True)  # started over without a request: the old one goes
        assert m.resume() is None
        m.start({"patch": 16}, resume={"request": {"a": 3}})
    db = sqlite3.connect(tmp_path / FILE)  # an occlens that knows no requests starts over with other settings
    db.execute("UPDATE run SET value = ? WHERE name = 'settings'", (json.dumps({"patch": 4}),))
    db.commit()
    db.close()
    with Manifest(tmp_path) as m:
        assert m.resume() is None


def test_python_and_the_command_answer_each_other(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 3, broken=False)
    report = occlens.run(data, out, str(model), patch=8, workers=0, progress=False)
    assert report.done_now == 3
    code, _, err = run(["run", data, "--out", out, "--model", model, *FAST, "--workers", "0"], capsys)
    assert code == 0 and "3 done before, 0 to do" in err
    again = occlens.run(data, out, str(model), patch=8, workers=0, progress=False)
    assert again.done_now == 0 and again.summary == report.summary and again.explained == report.explained
