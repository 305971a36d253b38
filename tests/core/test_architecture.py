"""The shape of the core, read from its source: no import circles, no private names across modules, no adapter.

Imports inside functions count as much as those at the top (a circle hidden in a function is still a
circle); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "frx_plugin"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                skip.update(id(sub) for sub in ast.walk(node))
    return skip


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], list[tuple[str, str]], set[str]]:
    """(frx modules imported, (module, private name) pairs imported, every top-level package imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, private, top = set(), [], set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                top.add(alias.name.split(".")[0])
                if alias.name in known:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            top.add(module.split(".")[0])
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    found.add(f"{module}.{alias.name}")
                elif module in known:
                    found.add(module)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((module, alias.name))
    found.discard(name)
    return found, private, top


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_function_level_imports_and_finds_a_planted_circle(tmp_path):
    # the walk itself must be able to fail: a circle through an import inside a function is found
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(edges) == [["a", "b", "c"]]
    tree_source = "def f():\n    from frx_plugin.passes import run_pass\n"
    known = {"frx_plugin.passes", "frx_plugin.x"}
    path = tmp_path / "x.py"
    path.write_text(tree_source)
    assert _imports("frx_plugin.x", path, known)[0] == {"frx_plugin.passes"}


def _with_packages(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """``edges`` plus what an import runs implicitly: importing ``a.b.c`` first runs the ``__init__`` of ``a`` and
    ``a.b`` (and their re-exports); a module's own packages are left out (they are running already when it is)."""
    out = {}
    for name, found in edges.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        implied = {".".join(module.split(".")[:i]) for module in found for i in range(1, module.count(".") + 1)}
        out[name] = (found | {p for p in implied if p in edges}) - own - {name}
    return out


def test_package_init_files_count_as_edges():
    # plugins -> builtin -> two_stage.decoders runs two_stage/__init__, which re-exports runner -> plugins: a circle
    edges = {"p.plugins": {"p.builtin"}, "p.builtin": {"p.two_stage.decoders"}, "p.two_stage": {"p.two_stage.runner"},
             "p.two_stage.runner": {"p.plugins"}, "p.two_stage.decoders": set(), "p": set()}
    assert _circles(edges) == []
    assert _circles(_with_packages(edges)) == [["p.builtin", "p.plugins", "p.two_stage", "p.two_stage.runner"]]


def test_the_core_has_no_import_circles(graph):
    circles = _circles(_with_packages({name: found for name, (found, _, _) in graph.items()}))
    assert circles == [], ("import circles (function-level imports and package __init__ files count): "
                           + "; ".join(" <-> ".join(c) for c in circles))


def test_no_private_name_is_imported_across_modules(graph):
    private = [f"{name} takes {module}.{alias}" for name, (_, pairs, _) in graph.items() for module, alias in pairs]
    assert private == []


def test_the_core_imports_no_adapter_and_no_framework(graph):
    forbidden = {"frx_lightning", "frx_insightface", "lightning", "pytorch_lightning", "insightface"}
    offenders = sorted(f"{name} imports {package}" for name, (_, _, top) in graph.items() for package in top & forbidden)
    assert offenders == []


def test_no_docstring_or_help_text_points_at_a_file_users_do_not_have():
    mentions = [str(p.relative_to(ROOT)) for p in list(PACKAGE.rglob("*.py")) + list((ROOT / "adapters").rglob("*.py"))
                if "DESIGN.md" in p.read_text(encoding="utf-8")]
    assert mentions == []


def test_every_subpackage_is_installed():
    """A non-editable install copies only the packages pyproject.toml lists: each subpackage must be there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
