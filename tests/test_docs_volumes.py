"""The examples of docs/volumes.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "volumes.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_example_runs(number, capsys):
    pytest.importorskip("nibabel")
    exec(compile(BLOCKS[number], f"{PAGE.name}[{number}]", "exec"), {})
    assert capsys.readouterr().out  # each example shows something
