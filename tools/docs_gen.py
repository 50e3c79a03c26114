"""What the docs site generates rather than copies: each part is made from the thing it documents.

- the command line's reference, from the argparse parser the ``occlens`` command runs (``cli_reference``);
- the argument tables, from the settings carriers' declarations (``arguments_reference``);
- the benchmark tables, from the JSON files in ``benchmarks/results`` (``benchmark_tables``), each of which
  must carry a ``meta`` object saying how, when and where it was measured;
- the Getting started page's code, from the notebook the tests execute (``notebook_code``).

The mkdocs hook (``tools/mkdocs_hooks.py``) replaces ``<!-- generated: NAME -->`` in a page with the part;
``python tools/docs_gen.py NAME`` prints it. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
META_KEYS = ("command", "date", "cpu", "gpu", "versions")


class MissingMeta(Exception):
    """A benchmark result that does not say how, when and where it was measured."""


def _cell(value) -> str:
    """A value as one Markdown table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.4g}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and not isinstance(value, dict | list):
                columns.append(key)
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ benchmarks


def benchmark_meta(path: Path) -> dict:
    """The ``meta`` object of one result file; MissingMeta (one line) when it lacks one or a key of it."""
    data = json.loads(path.read_text())
    meta = data.get("meta") if isinstance(data, dict) else None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise MissingMeta(
            f"{path.name}: no {', '.join(missing)} in its \"meta\" object; a benchmark result must say "
            f"{{{', '.join(META_KEYS)}}} (add it, marked \"meta_added_by_hand\": true, or rerun the benchmark)"
        )
    return meta


def _machine(meta: dict) -> str:
    cpu = meta.get("cpu") or {}
    flags = cpu.get("flags")
    text = cpu.get("model") or "CPU not recorded"
    text += f" ({', '.join(flags)})" if flags else " (flags not recorded)"
    if meta.get("cpu_count"):
        text += f", {meta['cpu_count']} cores"
    if meta.get("gpu"):
        text += f"; GPU: {meta['gpu']}"
    return text


def _versions(meta: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v) or "not recorded"


def benchmark_section(path: Path) -> str:
    meta = benchmark_meta(path)
    data = json.loads(path.read_text())
    out = [f"### `{path.name}` {{#{path.stem}}}", ""]  # the anchor: the file's stem
    out.append(f"- **command**: `{meta['command']}`")
    out.append(f"- **date**: {meta['date']}")
    out.append(f"- **machine**: {_machine(meta)}")
    out.append(f"- **versions**: {_versions(meta)}")
    if meta.get("meta_added_by_hand"):
        out.append("- these facts were added by hand after the run, from the commit history (`meta_added_by_hand`)")
    out.append("")
    for key, value in data.items():
        if key != "meta" and isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            out += [f"`{key}`:", "", _table(value), ""]
    return "\n".join(out)


def benchmark_tables(results: Path = RESULTS) -> str:
    """Every result file's facts and tables, by file name; MissingMeta for the first file without meta."""
    files = sorted(results.glob("*.json"))
    for path in files:  # refuse before writing anything
        benchmark_meta(path)
    return "\n".join(benchmark_section(p) for p in files)


# ------------------------------------------------------------------------------------------------ command line


def _subparsers(p: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _option_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.option_strings and action.nargs != 0:
        names += f" `{action.metavar or action.dest.upper()}`"
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
    if isinstance(default, (tuple, list)):
        shown = f"`{','.join(map(str, default))}`"
    help_text = (action.help or "").replace("%(default)s", str(default)).replace("%%", "%")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        help_text += f" (one of: {', '.join(map(str, action.choices))})"
    return f"| {names} | {_cell(help_text)} | {shown} |"


def cli_reference() -> str:
    """Every command of ``occlens`` and every option, from the parser the command runs."""
    from occlens.cli import COMMANDS
    from occlens.cli.parser import parser

    top = parser(COMMANDS)
    out = [f"`{top.format_usage().strip().removeprefix('usage: ')}`", "", top.description or "", ""]
    for name, sub in _subparsers(top):
        out += [f"### `occlens {name}`", "", (sub.description or "").strip(), "", "```text", sub.format_usage().strip(),
                "```", ""]  # fmt: skip
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
            if not actions:
                continue
            out += [f"**{group.title}**", "", "| argument | what | default |", "|---|---|---|"]
            out += [_option_row(a) for a in actions]
            out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ arguments


def carriers() -> list[tuple[str, type, str]]:
    """The settings carriers whose declarations the argument tables are made of: (title, class, where)."""
    from occlens.app.faithfulness import Scoring
    from occlens.app.options import Options
    from occlens.core.settings import Settings
    from occlens.serve.limits import UploadLimits

    return [
        ("Settings", Settings, "`occlens.Settings`: the window and scoring keywords of `explain`, `run` and "
         "`evaluate` (and their `settings=`)"),
        ("Options", Options, "`occlens.app.options.Options`: what a job writes and how a run schedules its images "
         "(keywords of `occlens.run`, flags of `occlens run` and `occlens explain`)"),
        ("Scoring", Scoring, "`occlens.app.faithfulness.Scoring`: how `occlens.evaluate` scores the maps"),
        ("UploadLimits", UploadLimits, "`occlens.serve.limits.UploadLimits`: what `occlens serve` lets a request "
         "bring and decode"),
    ]  # fmt: skip


def arguments_reference() -> str:
    """One table per carrier: each declared option's keyword, flag, default, whether it changes outputs, help."""
    from occlens.core.declare import declarations

    out = []
    for title, carrier, what in carriers():
        out += [f"## {title}", "", what + ".", "", "| keyword | flag | default | changes outputs | what |",
                "|---|---|---|---|---|"]  # fmt: skip
        for d in declarations(carrier):
            flag = f"`{d.flag_name}`" if d.flag else "(none)"
            default = "`None`" if d.default is None else f"`{d.default!r}`"
            choices = f" (one of: {', '.join(d.choices)})" if d.choices else ""
            output = "yes" if d.output else ""
            out.append(f"| `{d.name}` | {flag} | {default} | {output} | {_cell(d.help + choices)} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ notebook


def notebook_code(path: Path) -> str:
    """A notebook's cells as the page shows them: Markdown cells as they are, code cells as code blocks
    marked as run by the notebook's own test (the docs' example test does not run them twice)."""
    cells = json.loads(path.read_text())["cells"]
    out = []
    for cell in cells:
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "markdown":
            if source.startswith("# "):  # the notebook's title: the page has its own
                source = source.split("\n", 1)[1].strip() if "\n" in source else ""
            out += [source, ""]
        elif cell["cell_type"] == "code":
            out += ["<!-- not-run: the notebook itself is executed by tests/test_docs.py -->", "```python", source,
                    "```", ""]  # fmt: skip
    return "\n".join(out)


PARTS = {"cli": cli_reference, "arguments": arguments_reference, "benchmarks": benchmark_tables}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PARTS:
        print(f"usage: python tools/docs_gen.py {{{','.join(PARTS)}}}", file=sys.stderr)
        return 2
    try:
        print(PARTS[argv[0]]())
    except MissingMeta as e:
        print(f"docs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
