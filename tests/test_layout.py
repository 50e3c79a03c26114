"""The package's layout, read from its source: no import circle (not even through an import inside a function),
and no two modules defining a public function or class of one name. import-linter (.ci/run) checks the
layers; this checks what it does not."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import occlens

ROOT = Path(occlens.__file__).parent
# the one import that goes up, on purpose (pyproject's import-linter contract names it too): a result draws
# its own figure with the present layer, imported inside the method, only when asked for
DECLARED = {("occlens.core.result", "occlens.present.figure")}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _statements(tree: ast.AST):
    """Every import statement, inside functions too, but not those only type checkers read (TYPE_CHECKING)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for n in node.orelse if isinstance(n, (ast.Import, ast.ImportFrom)))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _statements(node)


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _statements(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        # `from X import sub` imports the submodule X.sub where there is one, else a name defined in X
        found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name and (name, m) not in DECLARED}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_not_even_inside_functions():
    known = modules()
    edges = {name: imported(name, path, known) for name, path in known.items()}
    assert sum(map(len, edges.values())) > 100  # the graph was read (a sanity check of the reader itself)
    assert cycles(edges) == []


def test_the_reader_finds_a_circle_through_a_function():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_two_modules_define_one_public_name():
    where = defaultdict(list)
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith(
                "_"
            ):
                if not any(getattr(d, "id", getattr(d, "attr", None)) == "overload" for d in node.decorator_list):
                    where[node.name].append(name)  # a typing.overload signature is no definition of its own
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert twice == {}


def test_the_package_root_lists_what_it_loads_lazily():
    assert set(occlens.__all__) == set(occlens._LAZY) | {"__version__"}
    for name in occlens.__all__:
        assert getattr(occlens, name) is not None
