"""``occlens run --ray``: the same files as a plain run, a killed worker replaced, Ctrl-C, resume both ways.

A local Ray instance with 2 workers (1 CPU each) on the test machine. The model is the colour classifier
of test_runs (logits = 8 x the channel means), saved whole with ``torch.save`` so that it can also kill
the process that runs it: on an image whose top-left pixel is magenta it sends itself SIGKILL, once
(a marker file on disk says it has done so), and with ``SLOW_COLOUR_DELAY`` set it sleeps in every
forward pass, so that a run can be interrupted half-way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_runs import NAMES, SIZE, check_complete, colour_image, make_imagefolder, manifest_rows, output_files, run

from occlens.cli import main

pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'occlens[ray]'")

FAST = ["--patch", "8", "--batch-size", "4"]
TIMINGS = ("seconds", "timings")  # the only JSON keys allowed to differ between two runs

MODELS = '''
"""The colour classifier of the Ray tests, with a way to crash and a way to be slow."""

import os
import signal
import time
from pathlib import Path

import torch


class Colour(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.scale = torch.nn.Parameter(torch.tensor(8.0), requires_grad=False)

    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_COLOUR_DELAY", "0")))
        corner = x[:, :, 0, 0]
        magenta = (corner[:, 0] > 0.9) & (corner[:, 1] < 0.1) & (corner[:, 2] > 0.9)
        if bool(magenta.any()) and not (self.marker and Path(self.marker).exists()):
            if self.marker:  # kill once; without a marker, every time
                Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.scale * x.mean(dim=(2, 3))
'''


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """colour.pt (the whole module, for --trust-pickle; kills once) and poison.pt (kills every time), each with
    its description beside it; their class importable here and in the Ray workers (through PYTHONPATH, which
    the local Ray instance passes on)."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "ray_colour.py").write_text(MODELS)
    description = {"input_size": [SIZE, SIZE], "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1], "labels": NAMES}
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        import ray_colour

        for name, marker in (("colour", str(folder / "killed-once")), ("poison", "")):
            torch.save(ray_colour.Colour(marker), folder / f"{name}.pt")
            (folder / f"{name}.json").write_text(json.dumps(description))
    return folder / "colour.pt"


@pytest.fixture(autouse=True)
def importable_model(colour_model, monkeypatch):
    monkeypatch.syspath_prepend(str(colour_model.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(colour_model.parent), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 images of 3 colours (2 in the wrong folder) and one broken file: (folder, truth)."""
    root = tmp_path_factory.mktemp("data")
    return root, make_imagefolder(root, 12)


def argv(data: Path, out: Path, model: Path, *extra) -> list:
    return ["run", data, "--out", out, "--model", model, "--trust-pickle", *FAST, *extra]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, colour_model, dataset):
    """A plain run, all in this process: the output folder."""
    out = tmp_path_factory.mktemp("plain") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(colour_model.parent))
        code = main([str(a) for a in argv(dataset[0], out, colour_model, "--workers", "0")])
    assert code == 2  # the broken image
    return out


def json_without_timings(path: Path) -> dict:
    data = json.loads(path.read_text())
    for key in TIMINGS:
        data.pop(key, None)
        data["meta"].pop(key, None)
    return data


def assert_same_outputs(ours: Path, theirs: Path) -> None:
    """The same files; npz and JPEG byte for byte, JSON equal but for the timings, figures of the same size."""
    files = output_files(theirs)
    assert output_files(ours) == files and files
    for name in sorted(files):
        assert_same_file(ours, theirs, name)


def assert_same_file(ours: Path, theirs: Path, name: str) -> None:
    a, b = ours / "images" / name, theirs / "images" / name
    if name.endswith(".json"):
        assert json_without_timings(a) == json_without_timings(b), name
    elif name.endswith(".png"):  # a figure: its panels placed as in the worker's first figure of the layout
        with Image.open(a) as x, Image.open(b) as y:
            assert x.size == y.size and x.format == y.format == "PNG", name
    else:
        assert a.read_bytes() == b.read_bytes(), name


def records(out: Path) -> dict[str, tuple]:
    """Every manifest row but its timing columns (seconds, finished)."""
    db = sqlite3.connect(f"file:{out / 'manifest.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT * FROM images").fetchall()
        columns = [c[0] for c in db.execute("SELECT * FROM images").description]
    finally:
        db.close()
    keep = [i for i, c in enumerate(columns) if c not in ("seconds", "finished")]
    return {row[0]: tuple(row[i] for i in keep) for row in rows}


def worker_rows(stdout: str) -> list[list[str]]:
    """The per-worker table of the Ray summary: one row of columns per worker."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("worker")) + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("  ") or not line.split()[0].isdigit():
            return rows
        rows.append(line.split())
    return rows


# --------------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_run_makes_the_files_of_a_plain_run(tmp_path, colour_model, dataset, plain, capsys):
    root, truth = dataset
    out = tmp_path / "out"
    code, stdout, stderr = run(argv(root, out, colour_model, "--ray", "--workers", "2"), capsys)
    assert code == 2, stderr  # the broken image, as in the plain run
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    assert_same_outputs(out, plain)
    assert records(out) == records(plain)  # the manifest too, the error message of the broken image included
    assert "explained 12 of 13 images" in stdout and "red/broken.png: " in stdout
    rows = worker_rows(stdout)
    assert len(rows) == 2 and sum(int(r[4]) for r in rows) == 13  # both workers took part; 13 images in all
    assert all(int(r[4]) > 0 and r[7] == "1" for r in rows)  # one process each: none died
    # the outputs depend on the same settings: each run resumes the other's folder, with nothing left to do
    code, _, stderr = run(argv(root, plain, colour_model, "--ray", "--workers", "2"), capsys)
    assert code == 2 and "13 images (imagefolder); 12 done before, 1 to do" in stderr


@pytest.mark.ray
@pytest.mark.slow
def test_ray_workers_on_a_shared_filesystem_write_into_dir_themselves(tmp_path, colour_model, dataset, plain, capsys):
    """--shared-fs: the workers write each image's files into DIR (atomically), the driver only records; the
    same files and manifest as a plain run."""
    root, truth = dataset
    out = tmp_path / "out"
    code, stdout, stderr = run(argv(root, out, colour_model, "--ray", "--workers", "2", "--shared-fs"), capsys)
    assert code == 2, stderr
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    assert_same_outputs(out, plain)
    assert records(out) == records(plain)
    assert "explained 12 of 13 images" in stdout


def with_marked_image(data: Path, n: int) -> dict[str, tuple[int, int]]:
    """n images as in test_runs and a green one with a magenta corner, green/marked.png: the truth."""
    truth = make_imagefolder(data, n, broken=False)
    px = np.asarray(colour_image(1, 99)).copy()
    px[:8, :8] = (255, 0, 255)  # the magenta corner: the model kills the process running it
    Image.fromarray(px).save(data / "green" / "marked.png")
    return truth | {"green/marked.png": (1, 1)}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_killed_mid_run_is_replaced_and_every_image_done_once(tmp_path, colour_model, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    truth = with_marked_image(data, 10)
    marker = colour_model.parent / "killed-once"
    marker.unlink(missing_ok=True)
    code, stdout, stderr = run(argv(data, out, colour_model, "--ray", "--workers", "2"), capsys)
    assert marker.exists()  # the worker really was killed
    assert code == 0, stderr
    check_complete(out, truth)  # every image once: one row, one whole set of files
    rows = worker_rows(stdout)
    assert sorted(int(r[7]) for r in rows) == [1, 2]  # one worker's process was replaced, once
    assert sum(int(r[4]) for r in rows) == len(truth) and "explained 11 of 11 images" in stdout


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_image_that_kills_its_worker_every_time_is_a_failure_of_its_own(tmp_path, colour_model, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    truth = with_marked_image(data, 8)  # 9 images: tasks of 2, so the marked one shares its first task
    poison = colour_model.with_name("poison.pt")
    code, stdout, stderr = run(argv(data, out, poison, "--ray", "--workers", "2"), capsys)
    assert code == 2, stderr
    # The image that shared the poisoned task, and any queued behind it on the same worker, are done:
    # suspects run alone on an idle worker, so a death there has one cause.
    check_complete(out, truth, failed={"green/marked.png"})
    assert "green/marked.png: the Ray worker process died 3 times explaining this image" in stdout


def assert_cut_short_whole(out: Path, plain: Path, truth) -> set[str]:
    """A run stopped half-way: some images recorded, each explained one with its whole set of files, the same as
    the plain run's, and no half-written file. Returns the keys explained."""
    recorded = {r[0] for r in manifest_rows(out)}
    assert 2 <= len(recorded) < len(truth)  # really interrupted half-way
    explained = {r[0] for r in manifest_rows(out) if r[1] == "ok"}
    for key in explained:  # each recorded image has its whole set of files, the same as the plain run's
        stem = key.replace(".png", "")
        theirs = [n for n in output_files(plain) if n.rsplit(".", 1)[0] == stem]
        assert len(theirs) >= 3  # result, preview (and the figure of a mistake)
        for name in theirs:
            assert_same_file(out, plain, name)
    assert not list(out.rglob(".*.part"))
    return explained


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_stops_the_cluster_and_either_kind_of_run_resumes(tmp_path, colour_model, dataset, plain, capsys):
    """Ctrl-C a --ray run half-way; a plain run finishes it; a --ray run redoes images whose files were lost."""
    root, truth = dataset
    out = tmp_path / "out"
    command = [sys.executable, "-m", "occlens", *map(str, argv(root, out, colour_model, "--ray", "--workers", "2"))]
    env = {**os.environ, "SLOW_COLOUR_DELAY": "0.2"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    done, deadline = 0, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and done < 2:
        try:
            done = sum(r[1] == "ok" for r in manifest_rows(out))
        except sqlite3.Error:  # not created yet, or being written
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    explained = assert_cut_short_whole(out, plain, truth)
    assert not [line for line in stdout.splitlines() if line.startswith("ray: ")]  # no summary of a run cut short

    # a plain run resumes the --ray run's folder
    code, _, stderr = run(argv(root, out, colour_model, "--workers", "0"), capsys)
    assert code == 2 and f"{len(explained)} done before" in stderr
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    assert_same_outputs(out, plain)

    # and a --ray run resumes a plain run's folder: images whose files are gone are redone
    lost = sorted(truth)[:3]
    for key in lost:
        (out / "images" / key.replace(".png", ".npz")).unlink()
    code, _, stderr = run(argv(root, out, colour_model, "--ray", "--workers", "2"), capsys)
    assert code == 2 and "13 images (imagefolder); 9 done before, 4 to do" in stderr
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    assert_same_outputs(out, plain)
    assert records(out) == records(plain)


# --------------------------------------------------------------------------------------------------
# errors: one line, exit status 2, before any work


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ray", "--workers", "0"], "--workers must be 1 or more with --ray"),
        (["--address", "127.0.0.1:6379"], "--address apply to runs on Ray; add --ray"),
        (["--gpus-per-worker", "1"], "--gpus-per-worker apply to runs on Ray; add --ray"),
        (["--shared-fs"], "--shared-fs apply to runs on Ray; add --ray"),
        (["--ray", "--gpus-per-worker", "1.5"], "--gpus-per-worker must be a fraction of one GPU"),
        (["--ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be a fraction of one GPU"),
        (["--ray", "--address", "head-node"], "--address must be HOST:PORT"),
        (["--ray", "--model", "torchvision:resnet18"], "random weights, drawn anew in every Ray worker"),
    ],
)
def test_bad_ray_options_are_refused(tmp_path, colour_model, dataset, capsys, extra, message):
    code, _, stderr = run(argv(dataset[0], tmp_path / "out", colour_model, *extra), capsys)
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert message in line
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_cluster_answers_is_refused_quickly(tmp_path, colour_model, dataset, capsys):
    port = closed_port()
    code, _, stderr = run(argv(dataset[0], tmp_path / "out", colour_model, "--ray", "--address", f"127.0.0.1:{port}"),
                          capsys)  # fmt: skip
    assert code == 2
    line = stderr.strip().splitlines()[-1]
    assert f"--address 127.0.0.1:{port}: nothing answers there" in line and "ray start --head" in line
    assert not list((tmp_path / "out" / "images").rglob("*.png"))


def test_ray_not_installed_names_the_extra(tmp_path, colour_model, dataset, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    code, _, stderr = run(argv(dataset[0], tmp_path / "out", colour_model, "--ray"), capsys)
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert "--ray needs Ray" in line and "pip install 'occlens[ray]'" in line


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_stops_a_plain_run_with_worker_processes(tmp_path, colour_model, dataset, plain):
    """Ctrl-C a plain run whose images are decoded and drawn by worker processes: exit 130, the manifest
    holds exactly the images whose files are whole, and the worker processes are gone."""
    from test_runs import children, zombie

    root, truth = dataset
    out = tmp_path / "out"
    command = [sys.executable, "-m", "occlens", *map(str, argv(root, out, colour_model, "--workers", "2"))]
    paths = os.pathsep.join(filter(None, [str(colour_model.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "SLOW_COLOUR_DELAY": "0.2", "PYTHONPATH": paths}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    done, workers, deadline = 0, set(), time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and done < 2:
        try:
            done = sum(r[1] == "ok" for r in manifest_rows(out))
        except sqlite3.Error:  # not created yet, or being written
            pass
        workers |= children(proc.pid)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert workers  # the run had worker processes...
    while workers and time.monotonic() < deadline:
        workers = {pid for pid in workers if Path(f"/proc/{pid}").exists() and not zombie(pid)}
        time.sleep(0.05)
    assert not workers  # ...and none outlives it
    assert_cut_short_whole(out, plain, truth)


@pytest.mark.ray
@pytest.mark.slow
def test_more_gpus_than_the_machine_has_are_refused(tmp_path, colour_model, dataset, capsys):
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs or more")
    code, _, stderr = run(argv(dataset[0], tmp_path / "out", colour_model, "--ray", "--workers", "8",
                               "--gpus-per-worker", "1"), capsys)  # fmt: skip
    assert code == 2
    line = stderr.strip().splitlines()[-1]
    assert "8 Ray workers with --gpus-per-worker 1 need 8 GPUs, and this machine has" in line
    assert not (tmp_path / "out").exists()  # refused before any image: nothing is left behind, not even a manifest


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
