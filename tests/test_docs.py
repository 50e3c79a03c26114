"""The documentation: what it says runs, what it lists is complete, and the site builds offline.

- every ```python block of README.md and docs/*.md runs, in order per page, in a fresh folder holding the
  images the pages name (copies of the bundled photos), unless an HTML comment right before it says
  ``<!-- not-run: REASON -->``, with a reason;
- the Getting started notebook runs in a real Jupyter kernel (nbclient) and shows its figures;
- the API reference has an entry for every name in ``occlens.__all__``; the command-line page is generated
  from the parser, the argument tables from the declarations, the Speed page's tables from the benchmark
  results, each of which must say how, when and where it was measured;
- ``mkdocs build --strict`` passes, and no built page loads a script, a stylesheet or a font from the web.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import occlens
from occlens.core.samples import samples

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))
import docs_gen  # noqa: E402

PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
BLOCK = re.compile(r"(?P<before>(?:<!--[^\n]*-->\n)?)```python\n(?P<code>.*?)```", re.S)
NOT_RUN = re.compile(r"<!-- not-run:(?P<reason>[^>]*?)-->")


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, reason not run or None) of each python block of a page, in order."""
    text = page.read_text()
    out = []
    for m in BLOCK.finditer(text):
        marker = NOT_RUN.search(m.group("before"))
        reason = marker.group("reason").strip() if marker else None
        out.append((text[: m.start("code")].count("\n"), m.group("code"), reason))
    return out


def test_readme_is_short_and_shows_the_demo_figure():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "](docs/demo-chelsea.png)" in text and (DOCS / "demo-chelsea.png").is_file()
    # the two set-up commands, unchanged
    assert "python -m pip install . && occlens demo" in text
    assert 'python -m pip install -e ".[test]" && python -m pytest' in text


def test_every_block_not_run_says_why():
    """A marker without a reason fails, and a page has at least one block that runs or a reason for each."""
    for page in PAGES:
        for line, _, reason in blocks(page):
            assert reason != "", f"{page.name}:{line}: <!-- not-run: --> needs a reason"
    assert NOT_RUN.search("<!-- not-run: needs a GPU -->").group("reason").strip() == "needs a GPU"


@pytest.fixture
def docs_folder(tmp_path, monkeypatch):
    """A folder holding the files the pages' examples name: cat.jpg, dog.jpg, x.jpg and a dataset val/."""
    photos = {s.name: s.path for s in samples()}
    shutil.copy(photos["chelsea"], tmp_path / "cat.jpg")
    shutil.copy(photos["coffee"], tmp_path / "dog.jpg")
    shutil.copy(photos["camera"], tmp_path / "x.jpg")
    (tmp_path / "val" / "tabby").mkdir(parents=True)
    shutil.copy(photos["chelsea"], tmp_path / "val" / "tabby" / "chelsea.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


# the README's one python block, its quickstart, runs cell by cell in a Jupyter kernel in tests/test_notebook.py
RUNNABLE = [p for p in PAGES[1:] if any(reason is None for _, _, reason in blocks(p))]


def test_the_readmes_python_is_the_quickstart_that_test_notebook_runs():
    from test_notebook import quickstart

    (line, code, reason), *others = blocks(ROOT / "README.md")
    assert others == [] and reason is None
    assert [c for c in code.splitlines() if c.strip()] == quickstart()


@pytest.mark.slow  # the default model on a few photos per page: 5-40 s a page on a busy 2-core machine
@pytest.mark.timeout(400)
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_the_pages_python_examples_run(page, docs_folder):
    namespace: dict = {"__name__": "__main__"}  # a fresh script per page: its blocks run in order
    for line, code, reason in blocks(page):
        if reason is not None:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - the page and line say where
            raise AssertionError(f"{page.name}, the block at line {line} failed: {type(e).__name__}: {e}") from e


@pytest.mark.slow
@pytest.mark.timeout(400)  # a kernel, the default model, a one-image run: 30-90 s on a busy 2-core machine
def test_the_getting_started_notebook_runs_and_shows_its_figures(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "kernels" / "occlens-docs"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "occlens docs", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    source = str(Path(occlens.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    work = tmp_path / "notebook"
    work.mkdir()
    nb = nbformat.read(DOCS / "getting-started.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="occlens-docs",
                                     resources={"metadata": {"path": str(work)}})  # fmt: skip
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert [o for o in outputs if o["output_type"] == "error"] == []
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 2  # the result shown, then the coarse map's figure
    assert (work / "runs" / "val" / "report" / "index.html").is_file()
    assert (work / "cat.jpg").is_file()  # it made its own images


def test_the_getting_started_page_is_the_notebook():
    page = docs_gen.notebook_code(DOCS / "getting-started.ipynb")
    cells = json.loads((DOCS / "getting-started.ipynb").read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            assert "".join(cell["source"]).rstrip() in page
    assert "<!-- generated: getting-started.ipynb -->" in (DOCS / "getting-started.md").read_text()


def test_the_api_reference_has_every_public_name():
    text = (DOCS / "api.md").read_text()
    entries = re.findall(r"^::: occlens\.(\S+)$", text, re.M)
    assert sorted(entries) == sorted(occlens.__all__)


def test_the_command_line_page_lists_every_command_and_option():
    from occlens.cli import COMMANDS

    reference = docs_gen.cli_reference()
    for name in COMMANDS:
        assert f"### `occlens {name}`" in reference
    from occlens.cli.parser import parser

    for _, sub in docs_gen._subparsers(parser(COMMANDS)):
        for action in sub._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in reference, flag
    assert "<!-- generated: cli -->" in (DOCS / "command-line.md").read_text()


def test_the_argument_tables_hold_every_declaration():
    from occlens.core.declare import declarations

    tables = docs_gen.arguments_reference()
    for title, carrier, _ in docs_gen.carriers():
        assert f"## {title}" in tables
        for d in declarations(carrier):
            assert f"| `{d.name}` |" in tables and d.help.split(" (")[0][:40].replace("|", "\\|") in tables
    assert "<!-- generated: arguments -->" in (DOCS / "arguments.md").read_text()


def test_every_benchmark_result_says_how_when_and_where(tmp_path):
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        meta = docs_gen.benchmark_meta(path)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", meta["date"]), path.name
        assert set(meta["cpu"]) >= {"model", "flags"} and "torch" in meta["versions"], path.name
    tables = docs_gen.benchmark_tables()
    assert "`occlusion_speed-cpu.json`" in tables and "**command**" in tables
    assert "<!-- generated: benchmarks -->" in (DOCS / "speed.md").read_text()
    # a result without meta is refused in one line that names it
    (tmp_path / "new-cpu.json").write_text(json.dumps({"rows": [{"a": 1}]}))
    with pytest.raises(docs_gen.MissingMeta, match=r"^new-cpu\.json: no command, date, cpu, gpu, versions") as e:
        docs_gen.benchmark_tables(tmp_path)
    assert "\n" not in str(e.value)


EXTERNAL = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//", re.I
)  # a script, stylesheet, font, icon or image the page would fetch from the web


@pytest.mark.slow  # mkdocs and mkdocstrings over the whole package: 5-20 s
@pytest.mark.timeout(300)
def test_the_site_builds_strictly_and_offline(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 15
    for page in pages:
        html = page.read_text()
        assert not EXTERNAL.findall(html), (page.name, EXTERNAL.findall(html)[:3])
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page.name
    css = "".join(p.read_text(errors="replace") for p in site.rglob("*.css"))
    assert not re.search(r"@import\s+url\([\"']?https?:", css)
    api = (site / "api.html").read_text()
    for name in occlens.__all__:
        assert f'id="occlens.{name}"' in api, name  # each public name has its entry
    assert "generated:" not in (site / "speed.html").read_text()  # every generated part was made
    # the README's links into the docs point at pages that exist
    for target in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).is_file(), target
