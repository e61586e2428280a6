"""The package's modules import one another without a cycle, and each imports on its own.

The import graph is read from the sources with :mod:`ast`: an edge ``a -> b`` for every
``import`` / ``from ... import`` in module ``a`` (at module level or inside a function) that
names module ``b`` of the package, or a name defined in ``b``'s package ``__init__``. Importing
``p.q.r`` also imports ``p.q``, so an edge to ``p.q.r`` adds one to the package ``p.q``; the
packages that contain ``a`` itself are left out (they are always imported before ``a``). Imports
inside functions count as well (a lazy import still makes two modules depend on each other);
:data:`IGNORED` lists the ones tolerated for now, each with its reason.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dkkt_plugin

ROOT = Path(dkkt_plugin.__file__).parent
PACKAGE = "dkkt_plugin"
# Function-level imports left out of the cycle check, with the reason (as import-linter's
# ignore_imports): remove an entry once its import is gone.
IGNORED: dict[tuple[str, str], str] = {}


def modules() -> dict[str, tuple[Path, bool]]:
    """``{module name: (source file, is a package)}`` of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def imports(name: str, path: Path, package: bool, known: set[str], top_level: bool = False) -> set[str]:
    """The package's modules that module ``name`` imports (anywhere in its source; with
    ``top_level`` only the imports that run when the module is imported: outside functions)."""
    here = name if package else name.rsplit(".", 1)[0]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # p.q.r imports p.q first (the root's __init__ imports nothing)
            module = ".".join(parts[:i])
            if module in known and module != name and module not in ancestors:
                found.add(module)

    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), top_level):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            add(target)
            for alias in node.names:
                add(f"{target}.{alias.name}")  # `from . import registry`: a module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
    return found


def _nodes(tree: ast.AST, top_level: bool):
    """Every node of ``tree``, or (``top_level``) every node outside function bodies."""
    if not top_level:
        yield from ast.walk(tree)
        return
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [c for c in ast.iter_child_nodes(node) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))]


def graph(top_level: bool = False, ignored=()) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, without the edges in ``ignored``."""
    known = modules()
    return {name: {t for t in imports(name, path, package, set(known), top_level) if (name, t) not in ignored}
            for name, (path, package) in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import():
    g, top = graph(), graph(top_level=True)
    assert "dkkt_plugin.registry" in g["dkkt_plugin.methods.base"]  # from .. import registry
    assert "dkkt_plugin.nets" in g["dkkt_plugin.cpu.blocks"]  # from ..nets import ConvNet
    assert "dkkt_plugin.cpu" in g["dkkt_plugin.losses.dm"]  # from .. import cpu: the package
    assert "dkkt_plugin.cpu" not in g["dkkt_plugin.cpu.blocks"]  # its own package: imported first
    assert "dkkt_plugin.engine" in g["dkkt_plugin.cli"] and "dkkt_plugin.engine" not in top["dkkt_plugin.cli"]


def test_ignored_imports_are_function_level_only():
    top = graph(top_level=True)
    assert not [edge for edge in IGNORED if edge[1] in top.get(edge[0], ())]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("top_level", [True, False], ids=["module-level imports", "all imports"])
def test_the_package_has_no_import_cycle(top_level):
    found = cycles(graph(top_level, IGNORED))
    assert not found, "import cycles among the package's modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_imports_first():
    # each module imported into a fresh package state (torch stays loaded), in one subprocess
    names = sorted(modules())
    code = (
        "import importlib, sys, traceback\n"
        f"names = {names!r}\n"
        "import torch\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'dkkt_plugin' or m.startswith('dkkt_plugin.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"modules that fail to import first:\n{done.stdout}{done.stderr[-2000:]}"


@pytest.mark.parametrize("name", ["dkkt_plugin.runtime", "dkkt_plugin.settings", "dkkt_plugin.config",
                                  "dkkt_plugin.packaged", "dkkt_plugin.demo", "dkkt_plugin.cli"])
def test_torch_free_modules_import_without_torch(name):
    done = subprocess.run([sys.executable, "-c", f"import sys, {name}; sys.exit('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or f"importing {name} imported torch"
