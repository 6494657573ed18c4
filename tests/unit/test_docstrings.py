"""Every public function, class and method under tvcfs/ has a docstring.

The project's code standard (docs/architecture.md, "Code conventions"): public
functions and classes have docstrings giving shapes and dtypes, units, the errors raised
and the source of a format or protocol. This scan checks presence only (the content is
for review): it parses each module
with `ast` (nothing is imported) and lists `path:line name` for every public module-level
function or class, and every public method, that has none.

Public means the name does not start with `_` (dunder methods are therefore excluded too).
Exempt are `@<prop>.setter` / `@<prop>.deleter` (the property's getter documents it) and a
method overriding a method of the same name that is documented in a base class defined in
tvcfs/ (bases resolved by class name, transitively): the interface documents it, as
`BlockStore.get_many` documents each store's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tvcfs"


@dataclass
class ClassInfo:
    """A class found in tvcfs/: its base names and which of its methods have docstrings."""

    bases: list[str]
    documented: set[str] = field(default_factory=set)


def base_name(node: ast.expr) -> str | None:
    """The class name a base expression refers to (`Base`, `mod.Base`, `Generic[T]` -> name)."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def is_accessor(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether `func` is decorated `@<name>.setter` or `@<name>.deleter`."""
    return any(
        isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter")
        for d in func.decorator_list
    )


def methods(cls: ast.ClassDef):
    """The functions defined directly in a class body."""
    return [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def scan(package: Path = PACKAGE) -> list[str]:
    """`path:line name` for each undocumented public definition, overrides exempted."""
    trees = {
        path: ast.parse(path.read_text(), filename=str(path))
        for path in sorted(package.rglob("*.py"))
    }
    classes: dict[str, list[ClassInfo]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                info = ClassInfo([b for b in map(base_name, node.bases) if b])
                info.documented = {m.name for m in methods(node) if ast.get_docstring(m)}
                classes.setdefault(node.name, []).append(info)

    def documented_in_base(bases: list[str], name: str, seen: set[str]) -> bool:
        for base in bases:
            if base in seen:
                continue
            seen.add(base)
            for info in classes.get(base, []):
                if name in info.documented or documented_in_base(info.bases, name, seen):
                    return True
        return False

    missing = []
    root = package.parent
    for path, tree in trees.items():
        rel = path.relative_to(root)

        def visit_class(cls: ast.ClassDef, prefix: str) -> None:
            qual = f"{prefix}{cls.name}"
            if not ast.get_docstring(cls):
                missing.append(f"{rel}:{cls.lineno} {qual}")
            bases = [b for b in map(base_name, cls.bases) if b]
            for item in cls.body:
                if isinstance(item, ast.ClassDef) and not item.name.startswith("_"):
                    visit_class(item, f"{qual}.")
                    continue
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if item.name.startswith("_") or ast.get_docstring(item) or is_accessor(item):
                    continue
                if documented_in_base(bases, item.name, set()):
                    continue
                missing.append(f"{rel}:{item.lineno} {qual}.{item.name}")

        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit_class(node, "")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not node.name.startswith("_") and not ast.get_docstring(node):
                    missing.append(f"{rel}:{node.lineno} {node.name}")
    return missing


def test_public_api_has_docstrings():
    missing = scan()
    assert not missing, (
        f"{len(missing)} public definitions without a docstring "
        "(see docs/architecture.md, Code conventions):\n" + "\n".join(missing)
    )


def test_scan_finds_a_missing_docstring(tmp_path):
    """The scan itself can fail: an undocumented function and method are reported, an
    override of a documented base method, a setter and a private name are not."""
    pkg = tmp_path / "tvcfs"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "class Base:\n"
        '    """Doc."""\n'
        "    def get(self):\n"
        '        """Doc."""\n'
        "class Store(Base):\n"
        '    """Doc."""\n'
        "    def get(self): pass\n"
        "    def put(self): pass\n"
        "    @property\n"
        "    def size(self):\n"
        '        """Doc."""\n'
        "    @size.setter\n"
        "    def size(self, v): pass\n"
        "    def _private(self): pass\n"
        "def helper(): pass\n"
    )
    assert scan(pkg) == ["tvcfs/m.py:8 Store.put", "tvcfs/m.py:15 helper"]
