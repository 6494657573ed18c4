"""Layering rules checked on the source (docs/architecture.md, "Layers"): no import
cycles between tvcfs modules (imports inside functions count: a lazy import is still
a dependency; a package's ``__init__`` importing its own submodule at import time is
a re-export, not an edge, but one it makes inside a function — a backend registry —
is); the block layer and the transport's core and drivers it uses never import the
repository layer or above; nothing outside ``tvcfs/store`` imports ``lmdb``; and the
file system (``tvcfs/fs``) does not know the wire protocol: it imports nothing of
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


def _import_nodes(tree):
    """``(node, lazy)`` for every import statement of a module: ``lazy`` when it runs
    only when a function is called (inside a ``def`` or ``lambda``), not when the
    module is imported."""
    out = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, lazy))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def _imports(name: str, path: str, known: set) -> dict:
    """``{tvcfs module: lazy}`` that module ``name`` imports (anywhere in its body);
    ``lazy`` is True when every import of it is inside a function."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: dict = {}
    for node, lazy in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on pkg
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "tvcfs":
                out[t] = out.get(t, True) and lazy
    return out


def _graph():
    """``{module: {imported module: lazy}}`` over every tvcfs module."""
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


def _is_reexport(module: str, target: str, lazy: bool) -> bool:
    """A package's ``__init__`` importing its own submodule at import time, to re-export
    its names: not a layering edge. An import it makes inside a function (a registry
    that builds a backend on demand) is one, like any other module's."""
    return not lazy and target.startswith(module + ".")


def _layering_graph(graph: dict) -> dict:
    """``{module: {imported module}}``: every import, lazy or not, but re-exports."""
    return {m: {t for t, lazy in deps.items() if not _is_reexport(m, t, lazy)} for m, deps in graph.items()}


def _cycle_message(graph: dict) -> str:
    return "; ".join(" <-> ".join(c) for c in _cycles(_layering_graph(graph)))


def test_no_import_cycles():
    message = _cycle_message(_graph())
    assert not message, "import cycles between tvcfs modules: " + message


# The transport's repository side (docs/architecture.md, "Layers"): the adapter to
# ``Repo`` (``RepoBackend``), the tvcfs:// remote of ``sync.py`` and ``tvcfs serve``.
# Every other module of tvcfs/transport is its core and drivers, which work over a
# ``BlockBackend`` and may be driven by the block layer's peer tier.
TRANSPORT_REPOSITORY_SIDE = {"tvcfs.transport.backend", "tvcfs.transport.peer", "tvcfs.transport.ops"}
BELOW_THE_REPOSITORY = ("tvcfs.errors", "tvcfs.names", "tvcfs.encoding", "tvcfs.chunking", "tvcfs.dag",
                        "tvcfs.store", "tvcfs.transport")


def _below_the_repository(module: str) -> bool:
    return (module not in TRANSPORT_REPOSITORY_SIDE
            and any(module == p or module.startswith(p + ".") for p in BELOW_THE_REPOSITORY))


def _reaches_above(graph: dict, starts) -> list:
    """``"a -> b -> c"`` for every module above the repository line that ``starts``
    reach through ``graph`` (lazy imports included), with one path to it."""
    via = {m: None for m in starts}
    todo = list(starts)
    found = []
    while todo:
        m = todo.pop()
        for t in sorted(graph.get(m, ())):
            if t in via:
                continue
            via[t] = m
            if not _below_the_repository(t):
                path, x = [t], m
                while x is not None:
                    path.append(x)
                    x = via[x]
                found.append(" -> ".join(reversed(path)))
            else:
                todo.append(t)
    return sorted(found)


def test_block_layer_and_transport_drivers_stay_below_the_repository():
    """The block layer (tvcfs/store, its peer tier included) and the transport's core
    and drivers it uses never import the repository layer or anything above it, at
    import time or in a function: what they need from a repository (delta hints, a
    push's gc record) the layer above hands them (``BlockBackend``)."""
    graph = _layering_graph(_graph())
    starts = [m for m in graph if _below_the_repository(m) and m.startswith(("tvcfs.store", "tvcfs.transport"))]
    found = _reaches_above(graph, starts)
    assert not found, ("the block layer or the transport's drivers import the repository layer (inject what "
                       "they need from the caller instead):\n" + "\n".join(found))


def test_checker_counts_lazy_imports_and_registries(tmp_path):
    # a package re-exporting a submodule at import time is no edge; its registry
    # importing a backend inside a function is one, like any module's lazy import
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .api import helper\n\n"
                                     "def _factory():\n    from .backend import Backend\n    return Backend()\n")
    (pkg / "api.py").write_text("from . import _factory\nhelper = _factory\n")
    (pkg / "backend.py").write_text("from .driver import connect\nclass Backend: pass\n")
    (pkg / "driver.py").write_text("def connect():\n    from pkg import helper\n    return helper\n")
    paths = {"pkg": pkg / "__init__.py", "pkg.api": pkg / "api.py", "pkg.backend": pkg / "backend.py",
             "pkg.driver": pkg / "driver.py"}
    graph = {m: _imports(m, str(p), set(paths)) for m, p in paths.items()}
    assert graph["pkg"] == {"pkg.api": False, "pkg.backend": True}
    assert graph["pkg.driver"] == {"pkg": True}
    assert _cycles(_layering_graph(graph)) == [["pkg", "pkg.backend", "pkg.driver"]]
    assert _reaches_above({"tvcfs.store.x": {"tvcfs.transport.client"}, "tvcfs.transport.client": {"tvcfs.pack"}},
                          ["tvcfs.store.x"]) == ["tvcfs.store.x -> tvcfs.transport.client -> tvcfs.pack"]


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
