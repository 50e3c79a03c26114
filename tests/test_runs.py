"""``occlens run``: dataset listing, the manifest, resume after SIGKILL, settings checks, the summary.

The model is a TorchScript "colour classifier" (logits = 8 x the channel means), so the prediction of
every test image is known without occlens: the channel that was made bright. Every 7th image is put in
the folder of the wrong colour, so the mistakes are known too.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from occlens.app.dataset import list_dataset
from occlens.app.manifest import FILE, Manifest, Record
from occlens.app.outputs import output_stems
from occlens.cli import main
from occlens.core.errors import ConfigError
from occlens.core.result import OcclusionResult

NAMES = ["red", "green", "blue"]
SIZE = 32
FAST = ["--patch", "8"]  # 4 x 4 windows on the 32 x 32 input


class Colour(torch.nn.Module):
    """Class c's logit is ``scale`` x the mean of channel c: the brightest channel wins."""

    def __init__(self, scale: float = 8.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale), requires_grad=False)

    def forward(self, x):
        return self.scale * x.mean(dim=(2, 3))


def make_model(folder: Path, scale: float = 8.0, names=NAMES) -> Path:
    """colour.pt (TorchScript) and colour.json beside it: 32 x 32 input, no normalisation, the class names."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(Colour(scale), torch.rand(1, 3, SIZE, SIZE)).save(str(folder / "colour.pt"))
    description = {
        "input_size": [SIZE, SIZE],
        "resize": None,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "labels": list(names),
    }
    (folder / "colour.json").write_text(json.dumps(description))
    return folder / "colour.pt"


def colour_image(colour: int, seed: int) -> Image.Image:
    """A 40 x 48 noisy image whose channel ``colour`` is brightest."""
    px = np.random.default_rng(seed).integers(0, 90, (40, 48, 3), dtype=np.uint8)
    px[..., colour] += 120
    return Image.fromarray(px)


def wrong_folder(i: int) -> bool:
    return i % 7 == 0


def make_imagefolder(root: Path, n: int, names=NAMES, broken: bool = True) -> dict[str, tuple[int, int]]:
    """Images 0..n-1 in class folders; image i is of colour i % 3, in the wrong folder when i % 7 == 0.

    Returns {key: (true class K, colour = the prediction Q)}; a broken file ``{names[0]}/broken.png`` is added.
    """
    truth = {}
    for i in range(n):
        colour = i % 3
        label = (colour + wrong_folder(i)) % 3
        key = f"{names[label]}/img{i:03d}.png"
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        colour_image(colour, i).save(root / key)
        truth[key] = (label, colour)
    if broken:
        (root / names[0] / "broken.png").write_text("not an image")
    return truth


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def output_files(out: Path) -> set[str]:
    folder = out / "images"
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def manifest_rows(out: Path, read_only: bool = True) -> list[tuple]:
    db = sqlite3.connect(f"file:{out / FILE}?mode=ro", uri=True) if read_only else sqlite3.connect(out / FILE)
    try:
        return db.execute("SELECT key, status, stem, predicted, label FROM images").fetchall()
    finally:
        db.close()


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def check_complete(
    out: Path, truth: dict[str, tuple[int, int]], failed: set[str] = frozenset(), figures: str = "mistakes"
) -> None:
    """Exactly one whole set of outputs per good image (the result, the preview, the figure of a mistake, or
    as ``figures`` says), nothing else, one manifest row per image."""
    good = sorted(set(truth) - failed)
    stems = [k.rsplit(".", 1)[0] for k in good]
    drawn = {s for k, s in zip(good, stems, strict=True) if figures == "all" or (figures == "mistakes" and
             truth[k][0] != truth[k][1])}  # fmt: skip
    expected = {f"{s}{suffix}" for s in stems for suffix in (".json", ".npz", ".jpg")} | {f"{s}.png" for s in drawn}
    assert output_files(out) == expected
    for key, stem in zip(good, stems, strict=True):
        base = out / "images" / stem
        if stem in drawn:
            with Image.open(base.with_suffix(".png")) as png:
                png.load()
        with Image.open(base.with_suffix(".jpg")) as preview:  # the image as the model saw it
            assert preview.format == "JPEG" and preview.size == (SIZE, SIZE) and preview.mode == "RGB"
        data = json.loads(base.with_suffix(".json").read_text())
        with np.load(base.with_suffix(".npz")) as z:
            arrays = {name: z[name] for name in z.files}
        label, colour = truth[key]
        assert (data["label"], data["predicted"]) == (label, colour), key
        assert arrays["delta"].dtype == np.float32 and "pixel_map" not in arrays  # compact: derived when read
        result = OcclusionResult.load(base)
        assert result.pixel_map.shape == (SIZE, SIZE) and np.allclose(result.delta, data["delta"], rtol=1e-6)
    rows = manifest_rows(out)
    assert sorted(r[0] for r in rows) == sorted(truth)  # one row per image, no duplicates
    assert {r[0] for r in rows if r[1] == "failed"} == set(failed)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(("-journal", "-wal"))]
    assert not leftovers


# --------------------------------------------------------------------------------------------------
# datasets


def test_imagefolder_csv_and_plain_folder_are_listed(tmp_path):
    folder = tmp_path / "classes"
    for key in ["cat/b.jpg", "cat/sub/a.png", "dog/c.JPEG", "dog/notes.txt", "dog/.hidden.png", ".cache/x.png"]:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(b"")
    d = list_dataset(folder)
    assert d.kind == "imagefolder" and d.labelled
    listed = [(i.key, i.label) for i in d.items]
    assert listed == [("cat/b.jpg", "cat"), ("cat/sub/a.png", "cat"), ("dog/c.JPEG", "dog")]
    assert d.items[0].path == folder / "cat/b.jpg"

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "z.png").write_bytes(b"")
    (tmp_path / "imgs" / "a.webp").write_bytes(b"")
    d = list_dataset(tmp_path / "imgs")
    assert d.kind == "folder" and not d.labelled and [i.key for i in d.items] == ["a.webp", "z.png"]

    csv = tmp_path / "sub" / "list.csv"
    csv.parent.mkdir()
    csv.write_text(f"Path,Label,extra\n../imgs/z.png,3,x\n{tmp_path / 'imgs' / 'a.webp'},tabby,y\nq.png,,z\n")
    d = list_dataset(csv)
    assert d.kind == "csv"
    by_key = {i.key: i for i in d.items}
    assert by_key["../imgs/z.png"].path == csv.parent / "../imgs/z.png" and by_key["../imgs/z.png"].label == "3"
    assert by_key[(tmp_path / "imgs" / "a.webp").as_posix()].label == "tabby"
    assert by_key["q.png"].label is None


@pytest.mark.parametrize(
    "layout, source, message",
    [
        ({"a.png": "", "cls/b.png": ""}, "", "both image files"),
        ({"readme.txt": ""}, "", "has no images"),
        ({}, "nope", "no such folder or CSV file"),
        ({"list.csv": "file,label\nx.png,1\n"}, "list.csv", "needs a header row with path"),
        ({"list.csv": "path,label\nx.png,1\nx.png,2\n"}, "list.csv", "listed twice with different labels"),
        ({"list.csv": "path,label\n,1\n"}, "list.csv", "line 2: the path is empty"),
        ({"data.txt": "x.png"}, "data.txt", "is a file but not a .csv"),
    ],
)
def test_bad_datasets_are_refused_with_one_line(tmp_path, layout, source, message):
    (tmp_path / "d").mkdir()
    for name, text in layout.items():
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_text(text)
    source = tmp_path / "d" / source
    with pytest.raises(ConfigError, match=message) as info:
        list_dataset(source)
    assert "\n" not in str(info.value)


def test_output_stems_are_unique_and_stable():
    keys = ["cat/x.jpg", "cat/x.png", "dog/x.jpg", "../up.png", "/abs/y.png"]
    stems = output_stems(keys)
    assert stems == {"cat/x.jpg": "cat/x_jpg", "cat/x.png": "cat/x_png", "dog/x.jpg": "dog/x",
                     "../up.png": "__/up", "/abs/y.png": "abs/y"}  # fmt: skip
    # a key recorded by an earlier run keeps its stem, even if the collision rule would now name it otherwise
    assert output_stems(["a.jpg", "a.png"], {"a.jpg": "a"}) == {"a.jpg": "a", "a.png": "a_png"}
    assert output_stems(["a.png"], {"x.jpg": "a"}) == {"a.png": "a_png"}
    with pytest.raises(ConfigError, match="images a.png and a_png.jpg would both write outputs named a_png"):
        output_stems(["a.png", "a_png.jpg"], {"x.jpg": "a"})


# --------------------------------------------------------------------------------------------------
# the manifest


def test_manifest_records_once_checks_settings_and_locks(tmp_path):
    with Manifest(tmp_path) as m:
        assert m.settings() is None
        assert m.start({"options": {"patch": [8, 8], "fill": "gray"}}) == []
        m.add(Record("a.png", "/d/a.png", "a", "failed", error="bad"))
        m.add(Record("a.png", "/d/a.png", "a", "ok", label=1, predicted=1, confidence=0.9, loss=0.1))
        m.add(Record("b.png", "/d/b.png", "b", "ok", label=1, predicted=2, confidence=0.8, loss=0.2))
        with pytest.raises(ConfigError, match="another occlens run is writing to"):
            Manifest(tmp_path)
    with Manifest(tmp_path) as m:
        records = m.records()
        assert list(records) == ["a.png", "b.png"] and records["a.png"].ok and records["a.png"].correct
        assert records["b.png"].correct is False
        assert m.start({"options": {"patch": [8, 8], "fill": "gray"}}) == []  # same settings: kept
        with pytest.raises(ConfigError, match=r"other settings \(options.patch: \[8, 8\] -> \[16, 16\]\).*--force"):
            m.start({"options": {"patch": [16, 16], "fill": "gray"}})
        assert len(m.records()) == 2
        assert m.start({"options": {"patch": [16, 16], "fill": "gray"}}, force=True) == [
            "options.patch: [8, 8] -> [16, 16]"
        ]
        assert m.records() == {} and m.settings()["options"]["patch"] == [16, 16]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / FILE).write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(ConfigError, match="is not an occlens manifest"):
        Manifest(tmp_path / "other")


# --------------------------------------------------------------------------------------------------
# whole runs


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """24 images of 3 colours (4 in the wrong folder) and one broken file: (folder, truth)."""
    root = tmp_path_factory.mktemp("data")
    return root, make_imagefolder(root, 24)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, colour_model, dataset):
    """One whole run, all in this process (--workers 0): (out folder, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    argv = ["run", dataset[0], "--out", out, "--model", colour_model, *FAST, "--workers", "0"]
    with pytest.MonkeyPatch.context() as mp:
        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        code = main([str(a) for a in argv])
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_run_writes_one_complete_set_per_image(reference, dataset):
    out, code, stdout, _ = reference
    root, truth = dataset
    truth = truth | {"red/broken.png": (0, None)}
    check_complete(out, truth, failed={"red/broken.png"})
    assert (out / "report" / "index.html").is_file()
    assert code == 2  # a bad image is reported in the exit code, after the whole run
    assert "explained 24 of 25 images" in stdout


def test_summary_has_accuracy_confident_mistakes_and_per_class_counts(reference, dataset):
    out, _, stdout, _ = reference
    truth = dataset[1]
    wrong = [k for k, (label, colour) in truth.items() if label != colour]
    assert len(wrong) == 4
    assert f"accuracy: {24 - 4}/24 = {100 * 20 / 24:.1f}%" in stdout
    # most confident mistakes: all four, ordered by P(Q) as saved in each npz
    confidence = {}
    for key in wrong:
        with np.load(out / "images" / key.replace(".png", ".npz")) as z:
            confidence[key] = float(z["probabilities"].max())
    lines = stdout.splitlines()
    start = lines.index("most confident mistakes:") + 2
    listed = [line.split()[1] for line in lines[start : start + 4]]
    assert listed == sorted(wrong, key=lambda k: -confidence[k])
    # per class: images truly of the class, how many were right, how many were predicted as it
    for c, name in enumerate(NAMES):
        images = sum(label == c for label, _ in truth.values())
        correct = sum(label == c == colour for label, colour in truth.values())
        predicted = sum(colour == c for _, colour in truth.values())
        row = next(line for line in lines if line.strip().startswith(f"{c} {name} "))
        assert row.split()[2:] == [str(images), str(correct), f"{100 * correct / images:.1f}%", str(predicted)]


def test_bad_image_is_a_failure_in_manifest_and_summary(reference):
    out, _, stdout, _ = reference
    failures = [r for r in manifest_rows(out) if r[1] == "failed"]
    assert [r[0] for r in failures] == ["red/broken.png"]
    assert "failed:\n  red/broken.png: " in stdout and "not an image Pillow can read" in stdout


def test_second_run_skips_finished_images(reference, colour_model, dataset, capsys):
    out = reference[0]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "images").rglob("*")}
    code, stdout, stderr = run(["run", dataset[0], "--out", out, "--model", colour_model, *FAST], capsys)
    assert code == 2  # the broken image is tried again, and fails again
    assert "25 images (imagefolder); 24 done before, 1 to do" in stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "images").rglob("*")} == before
    check_complete(out, dataset[1] | {"red/broken.png": (0, None)}, failed={"red/broken.png"})


def test_missing_outputs_of_a_recorded_image_are_redone(tmp_path, colour_model, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    truth = make_imagefolder(data, 3, broken=False)
    assert run(["run", data, "--out", out, "--model", colour_model, *FAST], capsys)[0] == 0
    (out / "images" / "green" / "img000.npz").unlink()  # img000 (red) sits in the green folder
    code, _, stderr = run(["run", data, "--out", out, "--model", colour_model, *FAST], capsys)
    assert code == 0 and "2 done before, 1 to do" in stderr
    check_complete(out, truth)


def test_changed_settings_are_refused_unless_forced(tmp_path, colour_model, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    truth = make_imagefolder(data, 4, broken=False)
    base = ["run", data, "--out", out, "--model", colour_model]
    assert run([*base, "--patch", "8"], capsys)[0] == 0
    code, _, err = run([*base, "--patch", "16", "--fill", "black"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "other settings" in line and "options.patch: [8, 8] -> [16, 16]" in line
    assert "options.fill" in line and "--force" in line
    assert json.loads((out / "images" / "red" / "img003.json").read_text())["grid"]["patch"] == [8, 8]
    # batch size, device and workers do not change the outputs: not refused
    assert run([*base, "--patch", "8", "--batch-size", "3", "--workers", "1"], capsys)[0] == 0
    code, _, err = run([*base, "--patch", "16", "--fill", "black", "--force"], capsys)
    assert code == 0, err
    check_complete(out, truth)
    data_json = json.loads((out / "images" / "red" / "img003.json").read_text())
    assert data_json["grid"]["patch"] == [16, 16] and data_json["settings"]["fill"] == "black"
    # the model is identified by its file's contents, not its name: same name, other weights
    (tmp_path / "m2").mkdir()
    other = make_model(tmp_path / "m2", scale=4.0)
    code, _, err = run(["run", data, "--out", out, "--model", other, "--patch", "16", "--fill", "black"], capsys)
    assert code == 2 and "model.file" in err


def test_unknown_class_folder_is_refused_before_any_work(tmp_path, colour_model, capsys):
    make_imagefolder(tmp_path / "data", 3, broken=False)
    (tmp_path / "data" / "purple").mkdir()
    colour_image(0, 0).save(tmp_path / "data" / "purple" / "p.png")
    code, _, err = run(["run", tmp_path / "data", "--out", tmp_path / "out", "--model", colour_model], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "purple/p.png" in line and "'purple' is not a class name" in line and "--labels" in line
    assert not (tmp_path / "out" / "images").exists()


def test_csv_and_plain_folder_runs(tmp_path, colour_model, capsys):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        colour_image(i, i).save(tmp_path / "imgs" / f"c{i}.png")
    (tmp_path / "list.csv").write_text("path,label\nimgs/c0.png,red\nimgs/c1.png,2\nimgs/c2.png,\n")
    code, stdout, err = run(["run", tmp_path / "list.csv", "--out", tmp_path / "o1", "--model", colour_model,
                             *FAST], capsys)  # fmt: skip
    assert code == 0, err
    assert "accuracy: 1/2 = 50.0%" in stdout  # c0 is red (right), c1 is green but labelled blue, c2 unlabelled
    rows = {r[0]: r for r in manifest_rows(tmp_path / "o1")}
    assert rows["imgs/c2.png"][3:] == (2, None)
    code, stdout, err = run(["run", tmp_path / "imgs", "--out", tmp_path / "o2", "--model", colour_model, *FAST],
                            capsys)  # fmt: skip
    assert code == 0, err
    assert "accuracy: - (no labels)" in stdout
    # unlabelled: no mistakes, so no figures by default
    assert output_files(tmp_path / "o2") == {f"c{i}{s}" for i in range(3) for s in (".jpg", ".json", ".npz")}


def test_output_folder_inside_the_dataset_is_not_part_of_it(tmp_path, colour_model, capsys):
    for i in range(3):
        colour_image(i, i).save(tmp_path / f"c{i}.png")
    argv = ["run", tmp_path, "--out", tmp_path / "occlens", "--model", colour_model, *FAST]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv, capsys)  # its figures are not taken for images of the dataset
    assert code == 0 and "3 images (folder); 3 done before, 0 to do" in err
    make_imagefolder(tmp_path / "classes", 3, broken=False)
    argv = ["run", tmp_path / "classes", "--out", tmp_path / "classes" / "out", "--model", colour_model, *FAST]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv, capsys)  # nor is the output folder a class folder
    assert code == 0 and "3 images (imagefolder); 3 done before, 0 to do" in err


def test_a_folder_in_use_by_another_run_is_refused(tmp_path, colour_model, capsys):
    make_imagefolder(tmp_path / "data", 3, broken=False)
    (tmp_path / "out").mkdir()
    with Manifest(tmp_path / "out"):
        code, _, err = run(["run", tmp_path / "data", "--out", tmp_path / "out", "--model", colour_model], capsys)
    assert code == 2 and "another occlens run is writing to" in err


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """240 images (the first 24 those of ``dataset``) and a broken file: a run long enough to be killed."""
    root = tmp_path_factory.mktemp("big")
    return root, make_imagefolder(root, 240)


def start_run(argv: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "occlens", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def kill_when(proc: subprocess.Popen, out: Path, ready) -> tuple[set[int], set[str]]:
    """SIGKILL ``proc`` once ``ready(ok rows)`` holds; wait until its worker processes are gone too; return
    them and the keys recorded (read from a copy: opening the manifest would roll back a hot journal)."""
    workers: set[int] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            done = sum(r[1] == "ok" for r in manifest_rows(out))
        except sqlite3.Error:  # not created yet, or being written
            done = 0
        workers |= children(proc.pid)
        if ready(done):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    seen = set(workers)
    while workers and time.monotonic() < deadline:  # the workers die with the run, even on SIGKILL
        workers = {pid for pid in workers if Path(f"/proc/{pid}").exists() and not zombie(pid)}
        time.sleep(0.05)
    assert not workers
    snapshot = out.parent / f"snapshot-{time.monotonic_ns()}"
    shutil.copytree(out, snapshot)
    return seen, {r[0] for r in manifest_rows(snapshot, read_only=False) if r[1] == "ok"}


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_killed_run_resumes_to_exactly_one_complete_set(tmp_path, colour_model, big, reference):
    """SIGKILL a run with worker processes once some images are recorded; the re-run completes it."""
    root, truth = big
    out = tmp_path / "out"
    argv = ["run", root, "--out", out, "--model", colour_model, *FAST, "--workers", "2"]
    workers, partial = kill_when(start_run(argv), out, lambda done: done >= 1)
    assert len(workers) >= 2  # none can write a file after the run is gone (checked in kill_when)
    assert 1 <= len(partial) < len(truth)  # really interrupted half-way
    rerun = subprocess.run([sys.executable, "-m", "occlens", *map(str, argv)], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert rerun.returncode == 2, rerun.stderr  # 2: the broken image
    assert f"{len(partial)} done before" in rerun.stderr
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    # and the resumed outputs are the same explanations as an uninterrupted run's (its first 24 images)
    for key in reference_keys(reference[0]):
        stem = key.replace(".png", ".json")
        ours = json.loads((out / "images" / stem).read_text())
        theirs = json.loads((reference[0] / "images" / stem).read_text())
        assert ours["predicted"] == theirs["predicted"] and ours["delta"] == theirs["delta"]  # exactly
        with (
            np.load(out / "images" / key.replace(".png", ".npz")) as a,
            np.load(reference[0] / "images" / key.replace(".png", ".npz")) as b,
        ):
            assert all(np.array_equal(a[k], b[k]) for k in b.files)


def reference_keys(out: Path) -> list[str]:
    return [r[0] for r in manifest_rows(out) if r[1] == "ok"]


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_a_run_killed_while_it_writes_its_report_resumes_whole(tmp_path, colour_model, big):
    """SIGKILL a run once every image is recorded, while it writes the report; the re-run redoes nothing
    and leaves a whole report (no temporary files)."""
    root, truth = big
    out = tmp_path / "out"
    argv = ["run", root, "--out", out, "--model", colour_model, *FAST, "--workers", "2"]
    _, partial = kill_when(start_run(argv), out, lambda done: done == len(truth))
    assert len(partial) == len(truth)
    rerun = subprocess.run([sys.executable, "-m", "occlens", *map(str, argv)], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert rerun.returncode == 2, rerun.stderr
    assert f"{len(truth)} done before, 1 to do" in rerun.stderr  # the broken image, tried again
    check_complete(out, truth | {"red/broken.png": (0, None)}, failed={"red/broken.png"})
    assert (out / "report" / "index.html").is_file()


def test_a_csv_target_column_explains_that_class_per_image(tmp_path, capsys):
    model = make_model(tmp_path / "m")
    for i in range(3):
        colour_image(i, i).save(tmp_path / f"{i}.png")
    (tmp_path / "list.csv").write_text("path,label,target\n0.png,red,blue\n1.png,green,\n2.png,,0\n")
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "list.csv"), "--model", str(model), "--out", str(out), *FAST]) == 0
    targets = {p.stem: json.loads(p.read_text())["target"] for p in (out / "images").glob("*.json")}
    assert targets == {"0": 2, "1": 1, "2": 0}  # blue by name; none: the prediction (green); 0 by index
    (tmp_path / "bad.csv").write_text("path,target\n0.png,purple\n")
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                str(tmp_path / "bad.csv"),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "o2"),
                *FAST,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(1 image(s) with this target)" in err[0] and "CSV targets" in err[0]
