"""Layout of the ``bin/b2s`` package (issue 27): imports flow one way, no private names cross
modules, no module is over ``MAX_LINES`` lines, and the shared names of ``b2s._constants`` have no
second copy in another module.

Every module under bin/b2s is parsed with ``ast`` (nothing is imported). An import counts wherever
it is written: at module level or inside a function (a function-level import still ties the two
modules together; it only hides a circle until the function runs).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "bin" / "b2s"
ROOT = "b2s"
MAX_LINES = 400
#: The module holding the names the stages share (obs keys, columns, file names), each once.
CONSTANTS = "b2s._constants"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def _absolute(node: ast.ImportFrom, name: str, path: Path) -> str | None:
    """The absolute module of ``from <node.module> import ...`` written in module ``name``."""
    if node.level == 0:
        return node.module
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path) -> list[tuple[str, str | None, int, ast.AST]]:
    """(target module, imported name or None, line, node) for every b2s import in the module.

    ``from b2s.x import y`` where ``b2s.x.y`` is a module gives target ``b2s.x.y`` and name None;
    otherwise target ``b2s.x`` and name ``y``.
    """
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    out.append((alias.name, None, node.lineno, node))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, path)
            if source is None or not (source == ROOT or source.startswith(ROOT + ".")):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, None, node.lineno, node))
                else:
                    out.append((source, alias.name, node.lineno, node))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the b2s modules it imports (the package root ``b2s`` left out: it only sets up
    the numba cache, and every submodule import runs it first)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {t for t, _, _, _ in imports(name, path) if t != name and t != ROOT}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports() -> list[str]:
    """``from b2s.x import _y`` (and ``mod._y`` on a b2s module bound by an import) across modules."""
    found = []
    for name, path in MODULES.items():
        rel = path.relative_to(REPO)
        module_aliases: set[str] = set()
        for target, imported, line, node in imports(name, path):
            if imported is not None and _is_private(imported) and target != name:
                found.append(f"{rel}:{line}: from {target} import {imported}")
            if imported is None:
                for alias in node.names:
                    if isinstance(node, ast.Import):
                        if alias.asname:
                            module_aliases.add(alias.asname)
                    elif alias.asname or alias.name:
                        module_aliases.add(alias.asname or alias.name)
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and _is_private(node.attr)):
                found.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def string_constants(tree: ast.Module) -> dict[str, tuple[str, int]]:
    """``{name: (value, line)}`` of the module-level assignments of a string (``X = "..."``,
    ``X: str = "..."``, each target of ``X = Y = "..."``)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = (value.value, node.lineno)
    return out


def constant_copies() -> list[str]:
    """Module-level strings of other b2s modules that repeat a value (or a name) of ``b2s._constants``."""
    shared = string_constants(ast.parse(MODULES[CONSTANTS].read_text()))
    by_value = {value: name for name, (value, _) in shared.items()}
    found = []
    for name, path in MODULES.items():
        if name == CONSTANTS:
            continue
        for var, (value, line) in string_constants(ast.parse(path.read_text())).items():
            if value in by_value or var in shared:
                same = by_value.get(value, var)
                found.append(f"{path.relative_to(REPO)}:{line}: {var} = {value!r} "
                             f"(import {same} from {CONSTANTS})")
    return found


def long_modules() -> dict[str, int]:
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in MODULES.values()}
    return {p: n for p, n in lengths.items() if n > MAX_LINES}


def test_the_package_is_found():
    assert "b2s" in MODULES and len(MODULES) > 20


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import circles among b2s modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_name_imported_across_modules():
    found = private_imports()
    assert not found, "private names imported from another b2s module:\n" + "\n".join(found)


def test_shared_names_have_one_source():
    assert CONSTANTS in MODULES
    found = constant_copies()
    assert not found, f"copies of names held in {CONSTANTS}:\n" + "\n".join(found)


def test_constants_module_is_plain():
    """Constants only: no imports, no functions or classes, every value a literal."""
    tree = ast.parse(MODULES[CONSTANTS].read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert all(isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) for n in body), \
        [ast.dump(n)[:80] for n in body if not isinstance(n, ast.Assign)]
    assert len(string_constants(tree)) == len(body)


def test_no_module_over_max_lines():
    found = long_modules()
    assert not found, f"modules over {MAX_LINES} lines:\n" + "\n".join(f"{p}: {n}" for p, n in found.items())


# The checks, checked: each finds what it is meant to find on a made-up case.

def test_cycles_finds_a_circle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name, private", [("_x", True), ("__x", True), ("__all__", False), ("x_", False)])
def test_private_names(name, private):
    assert _is_private(name) is private


def test_function_level_and_relative_imports_count(tmp_path, monkeypatch):
    pkg = tmp_path / "b2s"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from b2s.sub.b import _g\n    return _g\n")
    (pkg / "sub" / "b.py").write_text("from b2s.sub import a\n\ndef _g():\n    return a\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", pkg)
    monkeypatch.setattr(this, "REPO", tmp_path)
    monkeypatch.setattr(this, "MODULES", modules())
    graph = import_graph()
    assert graph["b2s.sub"] == {"b2s.sub.a"}
    assert graph["b2s.sub.a"] == {"b2s.sub.b"} and graph["b2s.sub.b"] == {"b2s.sub.a"}
    assert cycles(graph) == [["b2s.sub.a", "b2s.sub.b"]]
    assert private_imports() == ["b2s/sub/a.py:2: from b2s.sub.b import _g"]


def test_constants_module_may_be_imported_and_copies_are_found(tmp_path, monkeypatch):
    """``from b2s._constants import X`` is a public name of a private module: allowed; a private
    name from it is not; a module-level copy of one of its values (or names) is found."""
    pkg = tmp_path / "b2s"
    (pkg / "qc").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_constants.py").write_text('"""Names."""\n\nCELLTYPE = "celltype"\n_HIDDEN = "x"\n')
    (pkg / "qc" / "__init__.py").write_text("")
    (pkg / "qc" / "ok.py").write_text("from b2s._constants import CELLTYPE\nimport b2s._constants as c\n\n"
                                      "KEY = CELLTYPE\nOTHER = c.CELLTYPE + 's'\nLABEL = 'cell type'\n")
    (pkg / "qc" / "bad.py").write_text('from b2s._constants import _HIDDEN\n\nTYPE_COLUMN = "celltype"\n'
                                       'CELLTYPE: str = "cell_type"\n\ndef f():\n    local = "celltype"\n')
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", pkg)
    monkeypatch.setattr(this, "REPO", tmp_path)
    monkeypatch.setattr(this, "MODULES", modules())
    assert private_imports() == ["b2s/qc/bad.py:1: from b2s._constants import _HIDDEN"]
    assert constant_copies() == [
        "b2s/qc/bad.py:3: TYPE_COLUMN = 'celltype' (import CELLTYPE from b2s._constants)",
        "b2s/qc/bad.py:4: CELLTYPE = 'cell_type' (import CELLTYPE from b2s._constants)",
    ]
