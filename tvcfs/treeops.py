"""Path-level operations on directory DAGs: what changed between two trees, and
applying those changes onto a third (the rebase a mount does when its branch moved).

A change is ``path -> (cid, tsize) | None``: the entry that now stands at ``path``
(a file, symlink or whole directory) or ``None`` for a removal. Sub-trees with equal
CIDs are never read.
"""

from __future__ import annotations

from typing import Callable

from .dag import KIND_DIR, dir_links, stat_node
from .encoding.unixfs import build_directory


def changed_paths(get: Callable, old: bytes | None, new: bytes | None) -> dict:
    """``{path: (cid, tsize) | None}`` turning directory ``old`` into ``new``.

    Directories present on both sides are compared recursively; anything else that
    differs is one change at its path."""
    out: dict = {}

    def links(c):
        return {l.name: l for l in dir_links(get, c)} if c else {}

    def rec(a, b, prefix):
        la, lb = links(a), links(b)
        for name in set(la) | set(lb):
            p = prefix + name
            xa, xb = la.get(name), lb.get(name)
            if xa is not None and xb is not None and xa.hash == xb.hash:
                continue
            if xa is not None and xb is not None:
                if stat_node(get, xa.hash).kind == KIND_DIR and stat_node(get, xb.hash).kind == KIND_DIR:
                    rec(xa.hash, xb.hash, p + "/")
                    continue
            out[p] = (xb.hash, xb.tsize) if xb is not None else None

    if old != new:
        rec(old, new, "")
    return out


def collisions(ours: dict, theirs: dict) -> list:
    """Paths where two change sets touch the same entry, or one touches an ancestor
    of the other, with different results. Identical changes do not collide."""
    out = []
    for p, v in ours.items():
        for q, w in theirs.items():
            if p == q:
                if (v and v[0]) != (w and w[0]):
                    out.append(p)
            elif p.startswith(q + "/") or q.startswith(p + "/"):
                out.append(p)
    return sorted(set(out))


def apply_changes(get: Callable, put: Callable, tree: bytes | None, changes: dict) -> tuple[bytes, int]:
    """Apply ``changes`` onto directory ``tree`` and store the new directory nodes
    with ``put(cid, block)``. Returns ``(new_tree_cid, tsize)``. Missing intermediate
    directories are created; removing a missing path is a no-op."""
    # group by first component
    def rec(cur: bytes | None, ch: dict) -> tuple[bytes, int] | None:
        entries = {l.name: (l.hash, l.tsize) for l in dir_links(get, cur)} if cur else {}
        sub: dict[str, dict] = {}
        for p, v in ch.items():
            head, sep, rest = p.partition("/")
            if sep:
                sub.setdefault(head, {})[rest] = v
            elif v is None:
                entries.pop(head, None)
            else:
                entries[head] = v
        for head, chs in sub.items():
            base = entries.get(head)
            base_cid = base[0] if base and stat_node(get, base[0]).kind == KIND_DIR else None
            entries[head] = rec(base_cid, chs)
        cid, tsize, block = build_directory((n, c, t) for n, (c, t) in entries.items())
        put(cid, block)
        return cid, tsize

    return rec(tree, changes)
