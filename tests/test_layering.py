"""Layering rules checked on the source (docs/architecture.md): no import cycles
between tvcfs modules (imports inside functions count: a lazy import is still a
dependency), nothing outside ``tvcfs/store`` imports ``lmdb``, and the file system
(``tvcfs/fs``) does not know the wire protocol: it imports nothing of
``tvcfs.transport`` (a lazy mount reads through a block source of ``tvcfs/store``)."""

from __future__ import annotations

import ast
import os

import tvcfs

PKG_DIR = os.path.dirname(tvcfs.__file__)


def _modules() -> dict:
    mods = {}
    for dirpath, _, files in os.walk(PKG_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(PKG_DIR))[:-3].replace(os.sep, ".")
                if rel.endswith(".__init__"):
                    rel = rel[: -len(".__init__")]
                mods[rel] = path
    return mods


def _imports(name: str, path: str, known: set) -> set:
    """tvcfs modules that module ``name`` imports (anywhere in its body)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "tvcfs":
                out.add(t)
    return out


def _graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_parent(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a layering cycle
    pruned = {m: {t for t in deps if not _is_package_parent(m, t)} for m, deps in graph.items()}
    cycles = _cycles(pruned)
    assert not cycles, "import cycles between tvcfs modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_lmdb_only_inside_the_store():
    offenders = []
    for name, path in _modules().items():
        if name == "tvcfs.store" or name.startswith("tvcfs.store."):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "lmdb" or n.startswith("lmdb.") for n in names):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, "lmdb imported outside tvcfs/store: " + ", ".join(offenders)


def test_fs_does_not_import_the_transport():
    graph = _graph()
    offenders = sorted(f"{m} -> {t}" for m, deps in graph.items()
                       if m == "tvcfs.fs" or m.startswith("tvcfs.fs.")
                       for t in deps if t == "tvcfs.transport" or t.startswith("tvcfs.transport."))
    assert not offenders, ("the mount (tvcfs/fs) imports the transport; read through a block "
                           "source of tvcfs/store instead: " + ", ".join(offenders))


def test_checker_sees_a_cycle():
    # the checker itself must be able to fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_above_the_store_reaches_into_lmdb():
    """Code above tvcfs/store reads blocks through store views and capability methods
    (docs/architecture.md), never through the LMDB environment, its sub-databases or
    its file."""
    import re

    pattern = re.compile(r"\.dbs\b|\.env\.(begin|info|stat)|store\.env\b|store\._real\b|data\.mdb\"\)")
    offenders = []
    for name, path in _modules().items():
        if name == "tvcfs.store" or name.startswith("tvcfs.store."):
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{name}:{n}: {line.strip()}")
    assert not offenders, "LMDB internals used above the block layer:\n" + "\n".join(offenders)


def test_no_test_file_imports_another():
    """What two test files share lives in ``tests/support`` (docs/testing.md): a test
    module that imports another runs its fixtures and module-level set-up twice."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    found = []
    for sub in ("", "unit"):
        d = os.path.join(tests_dir, sub)
        for name in sorted(os.listdir(d)):
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            with open(os.path.join(d, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for m in mods:
                    if m.split(".")[0].startswith("test_") and m != name[:-3]:
                        found.append(f"{sub}/{name}: {m}")
    assert not found, found
