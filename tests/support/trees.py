"""Compare directory trees in tests (docs/testing.md)."""

from __future__ import annotations

import os
import stat


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


def snapshot(root: str, check_size: bool = False) -> dict:
    """``{path: entry}``: ``("f", bytes, executable)``, ``("d",)``, ``("l", target)``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("d",)
            else:
                with open(p, "rb") as f:
                    data = f.read()
                if check_size:
                    assert st_.st_size == len(data), (rel, st_.st_size, len(data))
                out[rel] = ("f", data, bool(st_.st_mode & 0o100))
    return out


def assert_same(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), (what, sorted(set(a) ^ set(b)))
    for k in a:
        if a[k] != b[k]:
            ea, eb = a[k], b[k]
            if ea[0] == eb[0] == "f" and ea[1] != eb[1]:
                first = next((i for i, (x, y) in enumerate(zip(ea[1], eb[1])) if x != y), min(len(ea[1]), len(eb[1])))
                raise AssertionError(f"{what}: {k}: content differs (sizes {len(ea[1])} / {len(eb[1])}, first "
                                     f"difference at {first})")
            raise AssertionError(f"{what}: {k}: {ea[:1] + ea[2:]} != {eb[:1] + eb[2:]}")
