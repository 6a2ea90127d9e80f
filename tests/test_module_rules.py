"""House rules of the engine's modules, read from their source with ``ast``:
``__all__`` names what each module offers, and no import runs in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "litestream_py"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))  # rglob does not enter the cmd link


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(tree: ast.Module) -> tuple[list[str] | None, set[str], set[str]]:
    """(__all__, every name bound at the top level, the public functions and classes)."""
    exported, bound, public = None, set(), set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bound.add(target.id)
                    if target.id == "__all__":
                        exported = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
            if not node.name.startswith("_"):
                public.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If):  # TYPE_CHECKING imports: names for annotations
            for sub in node.body:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    bound.update((a.asname or a.name).split(".")[0] for a in sub.names)
    return exported, bound, public


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_all_names_what_the_module_offers(path: Path) -> None:
    exported, bound, public = _top_level(ast.parse(path.read_text()))
    assert exported is not None, f"{_name(path)} has no __all__"
    assert not [n for n in exported if n not in bound], "__all__ names what the module does not define"
    assert not sorted(public - set(exported)), "public functions or classes missing from __all__"


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """The top-level statements, with those of ``if TYPE_CHECKING:`` blocks: an
    import for annotations is a dependency all the same (db.py and replica.py
    once imported each other that way), only one Python does not load."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out.extend(node.body)
        else:
            out.append(node)
    return out


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports at its top level, under TYPE_CHECKING included."""
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in _top_level_imports(ast.parse(path.read_text())):  # imports inside functions load later
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                out.add(candidate if any(_name(m) == candidate for m in MODULES) else module)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("litestream_py"):
            out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("litestream_py"))
    return {m for m in out if m != _name(path) and any(_name(p) == m for p in MODULES)}


# Known circles through annotations only, each with why it is left: keep this short.
ANNOTATION_CIRCLES_LEFT: set[tuple[str, str]] = set()


def test_no_import_circle() -> None:
    graph = {_name(p): _imports(p) for p in MODULES}
    for module, dep in ANNOTATION_CIRCLES_LEFT:
        graph[module].discard(dep)
    assert "litestream_py.errors" in graph["litestream_py.replica"]  # the reader sees imports at all
    assert "litestream_py.lease" in graph["litestream_py.replica"]  # and those under TYPE_CHECKING
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            pytest.fail("import circle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            if dep.startswith(module + "."):
                continue  # a package's __init__ importing its own modules
            visit(dep, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
