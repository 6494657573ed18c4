"""Compare directory trees in tests (docs/testing.md)."""

from __future__ import annotations

import os


def tree_bytes(root: str) -> dict:
    """``{relative path: bytes}`` of every regular file under ``root`` (symlinks as
    ``("symlink", target)``; empty directories as ``("dir",)``)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if not dirnames and not filenames and rel_dir != ".":
            out[rel_dir] = ("dir",)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = ("symlink", os.readlink(p))
        for name in filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("symlink", os.readlink(p))
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def assert_same_tree(a: str, b: str) -> None:
    """Assert that directories ``a`` and ``b`` hold the same paths with the same bytes
    (reports the first differing path rather than dumping megabytes)."""
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))
    for k in ta:
        assert ta[k] == tb[k], f"{k} differs between {a} and {b}"
