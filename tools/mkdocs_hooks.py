"""mkdocs hooks (``hooks:`` in mkdocs.yml): a page's ``<!-- generated: NAME -->`` becomes the part that
``tools/docs_gen.py`` makes from the code or the results it documents, at every build. No network."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # docs_gen, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the occlens of this checkout

import docs_gen  # noqa: E402

MARK = re.compile(r"<!-- generated: (?P<name>[\w.-]+) -->")


def part(name: str, page: Path) -> str:
    if name.endswith(".ipynb"):
        return docs_gen.notebook_code(page.parent / name)
    if name not in docs_gen.PARTS:
        raise PluginError(f"{page.name}: no generated part named {name!r} (known: {', '.join(docs_gen.PARTS)})")
    try:
        return docs_gen.PARTS[name]()
    except docs_gen.MissingMeta as e:
        raise PluginError(f"benchmarks/results/{e}") from None


def on_page_markdown(markdown: str, page, config, files) -> str:
    path = Path(page.file.abs_src_path)
    return MARK.sub(lambda m: part(m.group("name"), path), markdown)
