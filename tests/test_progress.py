"""Progress bars (occlens.core.progress, from tqdm): explain's windows, a run's images (its worker processes and
Ray workers too), evaluate's maps; a bar when someone watches (a notebook, or stderr a terminal), never into a
log; ``-q`` on every command; in a notebook without ipywidgets tqdm's text bar, and no warning."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from test_runs import FAST, colour_image, make_imagefolder, make_model

import occlens
from occlens.cli import main
from occlens.cli.commands import COMMANDS
from occlens.cli.parser import parser
from occlens.core.grid import Grid


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and keeps what was drawn on it."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch) -> Terminal:
    """stderr a terminal for the rest of the test (what the user watching sees). Set in the test itself: pytest
    puts its own capture back in sys.stderr when the test's call begins, after its fixtures."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def last(text: str) -> str:
    """The last line a bar drew (each is redrawn after a carriage return; the last one blank, to clear it)."""
    return [part for part in text.split("\r") if part.strip()][-1]


def counts(text: str, unit: str) -> list[tuple[int, int]]:
    """Every ``done/total UNIT`` a bar drew, in order."""
    return [(int(d), int(t)) for d, t in re.findall(rf"(\d+)/(\d+) {unit}\b", text)]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


IMAGE = torch.rand(3, 30, 44, generator=torch.Generator().manual_seed(1))  # not square
PATCH, STRIDE = (6, 8), (4, 5)
WINDOWS = Grid(30, 44, PATCH, STRIDE).size


def test_explain_draws_a_bar_of_its_windows(monkeypatch):
    terminal = on_terminal(monkeypatch)
    result = occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE, batch_size=9, progress=True)
    drawn = counts(terminal.getvalue(), "windows")
    assert drawn[-1] == (WINDOWS, WINDOWS) and {t for _, t in drawn} == {WINDOWS}
    assert [d for d, _ in drawn] == sorted(d for d, _ in drawn) and len(drawn) >= 2
    assert terminal.getvalue().startswith("\rexplain:") and terminal.getvalue().endswith("\r")  # cleared at the end
    quiet = occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE, batch_size=9, progress=False)
    assert quiet.delta.tolist() == result.delta.tolist() and counts(terminal.getvalue(), "windows") == drawn


def test_a_list_counts_the_windows_of_every_image(monkeypatch):
    terminal = on_terminal(monkeypatch)
    other = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(2))  # another shape, its own plan
    occlens.explain(model(), [IMAGE, other, IMAGE], patch=PATCH, stride=STRIDE, progress=True)
    total = 2 * WINDOWS + Grid(20, 20, PATCH, STRIDE).size
    assert counts(terminal.getvalue(), "windows")[-1] == (total, total)
    assert terminal.getvalue().startswith("\rexplain 3 images:")


def test_the_default_draws_a_bar_when_someone_watches_and_never_into_a_log(monkeypatch):
    terminal = on_terminal(monkeypatch)
    occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE)  # stderr a terminal: a bar
    assert counts(terminal.getvalue(), "windows")[-1] == (WINDOWS, WINDOWS)
    log = io.StringIO()  # stderr a file
    monkeypatch.setattr(sys, "stderr", log)
    occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE)
    occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE, progress=False)
    assert log.getvalue() == ""
    occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE, progress=True)  # asked for: a bar anyway
    assert counts(log.getvalue(), "windows")[-1] == (WINDOWS, WINDOWS)


def test_progress_still_takes_a_function_and_refuses_other_values(monkeypatch):
    terminal = on_terminal(monkeypatch)
    seen = []
    occlens.explain(model(), IMAGE, patch=PATCH, stride=STRIDE, batch_size=9, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (WINDOWS, WINDOWS) and terminal.getvalue() == ""  # the function instead of a bar
    with pytest.raises(occlens.ConfigError, match=r"progress must be True .* or a function\(done, total\), got 'yes'"):
        occlens.explain(model(), IMAGE, progress="yes")
    with pytest.raises(occlens.ConfigError, match="progress must be True"):
        occlens.run("nowhere", "out", progress=1)


def test_a_run_with_worker_processes_counts_every_image_in_one_bar(tmp_path, monkeypatch):
    terminal = on_terminal(monkeypatch)
    truth = make_imagefolder(tmp_path / "data", 16)  # and a broken image: 17, enough for 2 workers (8 each)
    colour = make_model(tmp_path / "m")
    report = occlens.run(tmp_path / "data", tmp_path / "out", str(colour), patch=8, workers=2, progress=True)
    assert report.done_now == len(truth) + 1
    drawn = counts(terminal.getvalue(), "images")
    assert drawn[0] == (0, 17) and drawn[-1] == (17, 17) and {t for _, t in drawn} == {17}
    assert "1 failed" in last(terminal.getvalue())  # the broken image, on the bar's last count
    assert "17 images (imagefolder); 0 done before, 17 to do" in terminal.getvalue()  # the run's note


def test_a_quiet_run_writes_nothing_on_stderr(tmp_path, monkeypatch):
    terminal = on_terminal(monkeypatch)
    make_imagefolder(tmp_path / "data", 4)
    colour = make_model(tmp_path / "m")
    report = occlens.run(tmp_path / "data", tmp_path / "out", str(colour), patch=8, workers=0, progress=False)
    assert report.done_now == 5 and terminal.getvalue() == ""


def test_a_ray_run_counts_the_workers_images_in_one_bar(tmp_path, monkeypatch, capsys):
    terminal = on_terminal(monkeypatch)
    pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'occlens[ray]'")
    make_imagefolder(tmp_path / "data", 8, broken=False)
    colour = make_model(tmp_path / "m")
    occlens.run(tmp_path / "data", tmp_path / "out", str(colour), patch=8, ray=True, workers=2, progress=True)
    drawn = counts(terminal.getvalue(), "images")
    assert drawn[0] == (0, 8) and drawn[-1] == (8, 8)
    assert "ray: local instance" in terminal.getvalue()  # a note, on its own line above the bar
    assert re.search(r"^ray: 2 worker\(s\) on 1 node\(s\): 8 images", capsys.readouterr().out, re.M)


def test_evaluate_draws_a_bar_of_images_times_methods(tmp_path, monkeypatch):
    terminal = on_terminal(monkeypatch)
    colour = make_model(tmp_path / "m")
    paths = []
    for i in range(2):
        colour_image(i, i).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_text("not an image")
    paths.insert(1, tmp_path / "broken.png")
    evaluation = occlens.evaluate(paths, None, str(colour), methods=("occlusion", "random"), patch=8, steps=4,
                                  bootstrap=0, progress=True)  # fmt: skip
    assert len(evaluation.rows) == 4 and len(evaluation.errors) == 1
    drawn = counts(terminal.getvalue(), "maps")
    assert drawn[-1] == (6, 6) and {t for _, t in drawn} == {6}  # 3 images x 2 methods, the broken one passed
    assert "1 failed" in last(terminal.getvalue())


def test_every_command_takes_quiet():
    top = parser(COMMANDS)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        quiet = next((a for a in command._actions if a.dest == "quiet"), None)
        assert quiet is not None and quiet.option_strings == ["-q", "--quiet"], f"occlens {name} lacks -q"


@pytest.fixture
def images(tmp_path):
    colour = make_model(tmp_path / "m")
    make_imagefolder(tmp_path / "data", 4)  # and data/red/broken.png
    colour_image(0, 0).save(tmp_path / "a.png")
    return colour, tmp_path


def command(argv, capsys, terminal) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out, terminal.getvalue()


@pytest.mark.parametrize("name", ["explain", "run", "evaluate"])
def test_the_command_draws_a_bar_on_a_terminal_and_quiet_leaves_errors_and_the_results(name, images, monkeypatch,
                                                                                        capsys, tmp_path):  # fmt: skip
    terminal = on_terminal(monkeypatch)
    colour, folder = images
    model = ["--model", colour, *FAST]
    argv = {
        "explain": ["explain", folder / "a.png", folder / "data" / "red" / "broken.png", *model],
        "run": ["run", folder / "data", *model, "--workers", "0"],
        "evaluate": ["evaluate", folder / "a.png", folder / "data" / "red" / "broken.png", *model, "--steps", "4",
                     "--bootstrap", "0", "--methods", "occlusion,random"],
    }[name]  # fmt: skip
    code, shown, drawn = command([*argv, "--out", tmp_path / "out"], capsys, terminal)
    assert code == 2  # the broken image
    unit = {"explain": "windows", "run": "images", "evaluate": "maps"}[name]
    assert counts(drawn, unit), drawn  # a bar on the terminal
    terminal.seek(0)
    terminal.truncate()
    code, quiet, said = command([*argv, "-q", "--out", tmp_path / "quiet"], capsys, terminal)
    assert code == 2
    errors = [line for line in said.splitlines() if line.startswith("occlens: error: ")]
    assert said == "".join(f"{line}\n" for line in errors)  # errors only, each on its own line: no bar, no note
    assert len(errors) == (0 if name == "run" else 1)  # a run records its bad image, and its summary says so
    # stdout as without -q: the table (the run's summary), where the files went; timings aside
    assert same(quiet, tmp_path / "quiet") == same(shown, tmp_path / "out") and quiet.strip()


def same(text: str, out) -> str:
    """``text`` with its numbers (timings among them) and the output folder left out."""
    return re.sub(r"\d+(\.\d+)?", "N", text.replace(str(out), "OUT"))


NOTEBOOK = """
import sys, types, warnings
import IPython

class Kernel:  # what a Jupyter kernel's shell has
    pass

class Shell:
    kernel = Kernel()
    config = {"IPKernelApp": {}}

IPython.get_ipython = lambda: Shell()
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # as tqdm.autonotebook looks for it
WIDGETS
import torch, occlens
from occlens.core.progress import bar_class

model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    chosen = bar_class()
    if "tqdm.notebook" not in {c.__module__ for c in chosen.__mro__}:
        occlens.explain(model, torch.rand(3, 24, 24), patch=6)  # the default, in a notebook: a bar
print("bar:", chosen.__module__, " ".join(c.__module__ for c in chosen.__mro__))
print("warnings:", [f"{w.category.__name__}: {w.message}" for w in caught])
"""

FAKE_WIDGETS = """
widgets = types.ModuleType("ipywidgets")
widgets.HTML = widgets.FloatProgress = widgets.HBox = type("Widget", (), {})
sys.modules["ipywidgets"] = widgets
"""


@pytest.mark.parametrize("widgets", [False, True])
def test_in_a_notebook_the_bar_is_tqdms_widget_or_text_and_never_a_warning(widgets):
    pytest.importorskip("IPython")
    script = NOTEBOOK.replace("WIDGETS", FAKE_WIDGETS if widgets else 'sys.modules["ipywidgets"] = None  # absent')
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warnings: []" in done.stdout and "Tqdm" not in done.stderr and "IProgress" not in done.stderr
    if widgets:  # tqdm.auto's widget bar
        assert "bar: tqdm.auto " in done.stdout and " tqdm.notebook " in done.stdout, done.stdout
    else:  # the text bar, on stdout (a notebook shows stderr as a red block), cleared when done
        assert "bar: tqdm.std " in done.stdout and " tqdm.notebook" not in done.stdout, done.stdout
        assert counts(done.stdout, "windows")[-1] == (16, 16) and "windows" not in done.stderr
