"""occlens where most users meet it: a Jupyter notebook.

The README's quickstart runs, cell by cell, in a real kernel (nbclient, ipykernel): each figure must show
once, as one compact picture, under the notebook's default matplotlib backend (and with pyplot's inline
backend active too), and nothing may warn that occlens did not say. The notebook makes its own images:
the bundled sample photos, copied where the README's lines look for them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import occlens
from occlens.core.samples import samples

README = Path(__file__).resolve().parents[1] / "README.md"
LIMIT = 150 * 1024  # bytes of one inline picture: a notebook keeps every picture it shows
# a warning as Python prints it: "FILE:LINE: CATEGORY: message"
WARNING = re.compile(r"^(?P<file>.+?):\d+: (?P<category>\w*Warning): (?P<message>.*)$", re.M)


def quickstart() -> list[str]:
    """The lines of the README quickstart's Python block, one cell each."""
    section = README.read_text().split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def picture(output) -> bytes | None:
    """The PNG an output of a cell shows, if it shows one."""
    data = output.get("data", {})
    return base64.b64decode(data["image/png"]) if "image/png" in data else None


def run_notebook(cells: list[str], folder: Path, monkeypatch) -> list:
    """Execute ``cells`` in a fresh kernel of this interpreter, in ``folder``; return each cell's outputs."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    spec = folder / "kernels" / "occlens-test"  # this Python, whatever "python" is on the PATH
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "occlens test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    source = str(Path(occlens.__file__).resolve().parents[1])  # the kernel imports the occlens under test
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's own default backend
    work = folder / "notebook"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="occlens-test",
                                     resources={"metadata": {"path": str(work)}})  # fmt: skip
    client.execute()
    return [cell.outputs for cell in nb.cells]


def foreign_warnings(outputs: list) -> list[str]:
    """The warnings in the cells' stderr that occlens did not raise: occlens's own point at the caller's line
    (a cell), a third party's at its own files."""
    text = "".join(o.get("text", "") for cell in outputs for o in cell if o.get("name") == "stderr")
    return [m.group(0) for m in WARNING.finditer(text) if "ipykernel_" not in m.group("file")]


@pytest.mark.slow
@pytest.mark.timeout(400)  # about 90 s on a busy 2-core machine: a kernel, the default model, a run
def test_the_readme_quickstart_in_a_notebook_shows_each_figure_once_and_warns_nothing(tmp_path, monkeypatch):
    lines = quickstart()
    assert any(line.startswith("result.plot()") for line in lines)  # what this test is about
    chelsea = next(s for s in samples() if s.name == "chelsea")
    make_images = (
        "import os, shutil\n"
        f"shutil.copy({str(chelsea.path)!r}, 'cat.jpg')\n"
        "os.makedirs('val/tabby')\n"
        f"shutil.copy({str(chelsea.path)!r}, 'val/tabby/chelsea.jpg')"
    )
    extra = [
        "result",  # a result shows itself as its figure
        "fig = result.plot()\ndisplay(fig)",  # display() shows it once too
        "import matplotlib.pyplot as plt\nresult.plot()",  # pyplot's inline backend active: still once
    ]
    outputs = run_notebook([make_images, *lines, *extra], tmp_path, monkeypatch)
    cells = dict(zip(["images", *lines, *extra], outputs, strict=True))
    plots = [line for line in lines if line.startswith("result.plot()")] + extra
    for source in plots:
        shown = [p for p in map(picture, cells[source]) if p is not None]
        assert len(shown) == 1, f"{source!r} showed {len(shown)} pictures: {cells[source]}"
        assert shown[0].startswith(b"\x89PNG") and len(shown[0]) <= LIMIT, (source, len(shown[0]))
        width, height = Image.open(io.BytesIO(shown[0])).size
        assert width >= 800 and height >= 500  # both rows of the mistake, at a readable size
    assert foreign_warnings(outputs) == []
    errors = [o for cell in outputs for o in cell if o["output_type"] == "error"]
    assert errors == []


def test_foreign_warnings_are_told_from_occlens_own():
    """The check above can fail: tqdm's warning at a model's first load (what every notebook printed) is
    foreign; occlens's own warnings point at the cell that called it."""
    tqdm = ("/usr/lib/python3/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update "
            "jupyter and ipywidgets.\n  from .autonotebook import tqdm as notebook_tqdm\n")  # fmt: skip
    ours = "/tmp/ipykernel_812/2960431.py:1: UserWarning: output='logits' but the model's scores look like ...\n"
    cell = [{"output_type": "stream", "name": "stderr", "text": tqdm + ours}]
    assert foreign_warnings([cell]) == [tqdm.splitlines()[0]]


@pytest.fixture(scope="module")
def default_model():
    return occlens.load_model()


@pytest.mark.slow
@pytest.mark.timeout(300)  # the default model on a 224 x 224 photo: 10-30 s on a busy 2-core machine
@pytest.mark.parametrize("sample", [s.name for s in samples()])
def test_the_demos_figures_are_compact_inline(default_model, sample):
    photo = next(s for s in samples() if s.name == sample)
    result = occlens.explain(default_model, photo.path, label=photo.label)
    png = result.plot()._repr_png_()
    assert png == result._repr_png_()  # the result shows itself as its figure does
    assert png.startswith(b"\x89PNG") and len(png) <= LIMIT, len(png)


@pytest.mark.slow  # a fresh interpreter imports torch: 3-10 s
def test_plot_returns_a_figure_that_shows_itself_and_that_pyplot_never_sees(tmp_path):
    """What plot returns is a matplotlib Figure that saves as one and draws itself for a notebook (as a compact
    PNG); a script shows nothing: plotting loads no pyplot, so nothing can call plt.show()."""
    script = (
        "import sys, torch, occlens\n"
        "from matplotlib.figure import Figure\n"
        "layers = torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()\n"
        "net = torch.nn.Sequential(*layers).eval()\n"
        "fig = occlens.explain(net, torch.rand(3, 16, 20), patch=4).plot()\n"
        f"fig.savefig({str(tmp_path / 'f.png')!r})\n"
        "assert isinstance(fig, Figure), type(fig)\n"
        "assert callable(fig._ipython_display_) and fig._repr_png_().startswith(bytes([137, 80, 78, 71]))\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and done.stderr == ""
    assert Image.open(tmp_path / "f.png").size[0] > 400
